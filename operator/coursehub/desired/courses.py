"""Pure: which CourseImages a hub takes, and which one owns a slug when two claim it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.courseimage import CourseImageSpec
from ..api.jupyterhubdeployment import JupyterHubDeploymentSpec


@dataclass(frozen=True)
class CourseRecord:
    """What the operator knows about one CourseImage."""

    namespace: str
    name: str
    uid: str
    created: str  # metadata.creationTimestamp (RFC 3339 sorts as text)
    generation: int
    labels: tuple[tuple[str, str], ...]
    spec: CourseImageSpec
    resolved_image: str | None = None  # last good digest-pinned image
    deleting: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def slug(self) -> str:
        """Slugs are matched case-insensitively: the lower-cased slug is the identity."""
        return self.spec.course.lower()

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class HubRecord:
    namespace: str
    name: str
    uid: str
    created: str
    generation: int
    spec: JupyterHubDeploymentSpec
    deleting: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def selects(hub: HubRecord, course: CourseRecord, namespace_labels: dict[str, dict[str, str]]) -> bool:
    courses = hub.spec.courses
    mode = courses.namespaces if courses else "Same"
    if mode == "Same" and course.namespace != hub.namespace:
        return False
    if mode == "Selector":
        sel = courses.namespace_selector
        if sel is None or not sel.matches(namespace_labels.get(course.namespace, {})):
            return False
    if courses and courses.selector and not courses.selector.matches(course.label_dict):
        return False
    return True


@dataclass
class Selection:
    """The outcome of slug assignment for one hub."""

    winners: dict[str, CourseRecord] = field(default_factory=dict)  # slug -> course
    duplicates: dict[tuple[str, str], CourseRecord] = field(default_factory=dict)  # loser key -> winner


def _age_key(c: CourseRecord):
    # Older wins; the name breaks ties between objects created in the same second.
    return (c.created, c.namespace, c.name)


def select_courses(
    hub: HubRecord, courses: list[CourseRecord], namespace_labels: dict[str, dict[str, str]]
) -> Selection:
    sel = Selection()
    chosen = [c for c in courses if not c.deleting and selects(hub, c, namespace_labels)]
    for c in sorted(chosen, key=_age_key):
        winner = sel.winners.get(c.slug)
        if winner is None:
            sel.winners[c.slug] = c
        else:
            sel.duplicates[c.key] = winner
    return sel


def namespace_owner(hubs, namespace: str) -> HubRecord:
    """The hub that owns a namespace: the oldest one there. z2jh's object names are not
    release-prefixed, so only one release fits a namespace. A hub being deleted still owns
    it until it is gone, so a younger hub never installs beside a release being uninstalled."""
    return min((h for h in hubs if h.namespace == namespace), key=lambda h: (h.created, h.name))


def unknown_course_policy(hub: HubRecord) -> str:
    courses = hub.spec.courses
    if courses and courses.on_unknown:
        return courses.on_unknown
    return "default" if courses and courses.default else "reject"


def launch_url(domain: str, slug: str) -> str:
    from urllib.parse import quote

    return f"https://{domain}/hub/tmplogin?course={quote(slug, safe='')}"
