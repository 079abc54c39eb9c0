"""Pure: the status of a CourseImage and of a JupyterHubDeployment from what the operator knows."""

from __future__ import annotations

from dataclasses import dataclass

from ..conditions import Cond, summary
from .courses import CourseRecord, launch_url


@dataclass(frozen=True)
class Resolution:
    """The last attempt to resolve spec.image, for one generation."""

    generation: int
    ok: bool
    reason: str
    message: str
    digest: str | None = None
    pinned: str | None = None
    at: str | None = None


@dataclass(frozen=True)
class Publication:
    """How one hub treats one course it selects."""

    hub: str  # namespace/name
    domain: str
    state: str  # Published | DuplicateCourse | NotResolved | WaitingForPull | NoGpuNodes | AllowlistFull
    message: str
    image: str | None = None  # what the hub offers now
    # PrePulled | Pulling | PrePullDisabled, or why it is in no puller (NoGpuNodes, Unplaceable...)
    prepull: str = "Pulling"
    prepull_message: str = ""
    # (reason, message): offered, but not quite as the CourseImage asks (e.g. without its pull secret)
    caveat: tuple[str, str] | None = None


@dataclass(frozen=True)
class RetentionResult:
    """The ECR lifecycle policy outcome for one course."""

    ok: bool
    reason: str
    message: str


COURSE_REQUIRED = ("ImageResolved", "Published", "PrePulled")


def course_conditions(
    course: CourseRecord,
    resolution: Resolution | None,
    pubs: list[Publication],
    retention: RetentionResult | None,
    selecting_hubs: tuple[str, ...] = (),
) -> list[Cond]:
    conds: list[Cond] = []
    if resolution is None:
        conds.append(Cond("ImageResolved", None, "Resolving", f"resolving {course.spec.image}"))
    elif resolution.ok:
        conds.append(Cond("ImageResolved", True, "Resolved", f"{course.spec.image} is {resolution.digest}"))
    else:
        msg = resolution.message
        if course.resolved_image:
            msg += f" (learners keep getting the last good image {course.resolved_image})"
        conds.append(Cond("ImageResolved", False, resolution.reason, msg))

    if not pubs and selecting_hubs:
        # A hub selects it but has not had its round yet: not a problem, just not done.
        conds.append(
            Cond(
                "Published",
                None,
                "Publishing",
                "hub " + ", ".join(sorted(selecting_hubs)) + " will publish it in its next round",
            )
        )
    elif not pubs:
        conds.append(
            Cond(
                "Published",
                False,
                "NoHub",
                "no JupyterHubDeployment selects this course: check the hub's "
                "spec.courses (namespaces, selector) and this object's labels and namespace",
            )
        )
    else:
        bad = [p for p in pubs if p.state != "Published"]
        if bad:
            conds.append(
                Cond("Published", False, bad[0].state, "; ".join(f"{p.hub}: {p.message}" for p in bad))
            )
        else:
            msg = "offered by " + ", ".join(sorted(p.hub for p in pubs))
            caveats = sorted((p.hub, p.caveat) for p in pubs if p.caveat)
            if caveats:
                reason = caveats[0][1][0]
                msg += "; " + "; ".join(f"{hub}: {why}" for hub, (_r, why) in caveats)
            else:
                reason = "Published"
            conds.append(Cond("Published", True, reason, msg))

    published = [p for p in pubs if p.state == "Published"]
    if not course.spec.pre_pull:
        conds.append(
            Cond("PrePulled", True, "PrePullDisabled", "spec.prePull is false: nodes pull on first start")
        )
    elif not published:
        conds.append(
            Cond("PrePulled", False, "NotPublished", "pre-pulling starts once a hub publishes the course")
        )
    else:
        pending = [p for p in published if p.prepull == "Pulling"]
        # In no puller at all (e.g. NoGpuNodes): the course's own reason, never "rolling out".
        left_out = [p for p in published if p.prepull not in ("Pulling", "PrePulled", "PrePullDisabled")]
        if left_out:
            conds.append(
                Cond(
                    "PrePulled",
                    False,
                    left_out[0].prepull,
                    "; ".join(f"{p.hub}: {p.prepull_message}" for p in left_out),
                )
            )
        elif pending:
            conds.append(
                Cond(
                    "PrePulled", False, "Pulling", "; ".join(f"{p.hub}: {p.prepull_message}" for p in pending)
                )
            )
        elif all(p.prepull == "PrePullDisabled" for p in published):
            conds.append(
                Cond("PrePulled", True, "PrePullDisabled", "the hub's spec.prePull.enabled is false")
            )
        else:
            conds.append(Cond("PrePulled", True, "PrePulled", "the image is on every eligible node"))

    if retention is not None:
        conds.append(Cond("RetentionApplied", retention.ok, retention.reason, retention.message))
    ready = summary(conds, required=COURSE_REQUIRED, ready_message="learners can start this course")
    return [ready, *conds]


def course_status(
    course: CourseRecord,
    resolution: Resolution | None,
    pubs: list[Publication],
    retention: RetentionResult | None,
    selecting_hubs: tuple[str, ...] = (),
) -> tuple[dict, list[Cond]]:
    """(status fields without conditions, conditions) for the status subresource."""
    fields: dict = {
        "observedGeneration": course.generation,
        "hubs": sorted(p.hub for p in pubs if p.state == "Published"),
    }
    if course.resolved_image:
        fields["resolvedImage"] = course.resolved_image
        fields["digest"] = course.resolved_image.split("@", 1)[1]
    if resolution and resolution.ok and resolution.at:
        fields["resolvedAt"] = resolution.at
    published = sorted((p for p in pubs if p.state == "Published"), key=lambda p: p.hub)
    if published:
        fields["launchURL"] = launch_url(published[0].domain, course.spec.course)
    return fields, course_conditions(course, resolution, pubs, retention, selecting_hubs)


HUB_REQUIRED = ("ReleaseDeployed", "DatabaseReady", "GatewayReady", "CoursesPublished")


def hub_ready(conds: list[Cond]) -> Cond:
    return summary(conds, required=HUB_REQUIRED, ready_message="the hub serves its declared state")
