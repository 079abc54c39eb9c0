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


def pull_secret_rule(hub: HubRecord, course: CourseRecord) -> str | None:
    """Why this hub may not use a course's pull secret, or None.

    Learner pods and puller pods run in the hub's namespace, where a Secret name resolves to
    the hub namespace's Secret. A CourseImage elsewhere names a Secret of *its* namespace
    (that is where the operator read it to resolve the image), so neither ever gets its name:
    it could pick up an unrelated Secret of the hub's namespace with the same name (a
    confused deputy). Such a course is offered without a pull secret (nodes' own
    credentials) and left out of the pullers (a pull without its credentials would fail and
    hold the whole DaemonSet back), and says why. Courses without a secret pull with the
    nodes' credentials wherever they live.
    """
    ref = course.spec.image_pull_secret_ref
    if ref is None or course.namespace == hub.namespace:
        return None
    return (
        f"spec.imagePullSecretRef names Secret {ref.name} of namespace {course.namespace}, but learner "
        f"pods and pre-pullers run in the hub's namespace {hub.namespace} and use Secrets from there only: "
        f"learner pods get no pull secret (the nodes' own credentials) and the image is not pre-pulled; "
        f"move the CourseImage to {hub.namespace}, or make the image pullable with the nodes' credentials "
        f"(and drop imagePullSecretRef)"
    )


def selects(hub: HubRecord, course: CourseRecord, namespace_labels: dict[str, dict[str, str]]) -> bool:
    courses = hub.spec.courses
    mode = courses.namespaces if courses else "Same"
    if mode == "Same" and course.namespace != hub.namespace:
        return False
    if courses and mode == "Selector":
        sel = courses.namespace_selector
        if sel is None or not sel.matches(namespace_labels.get(course.namespace, {})):
            return False
    return not (courses and courses.selector and not courses.selector.matches(course.label_dict))


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
