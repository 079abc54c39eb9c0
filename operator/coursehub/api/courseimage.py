"""The CourseImage kind: one course, one image, published to the hubs that select it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

# One grammar for the API server and the operator: the parser checks these same patterns.
from ..registry.reference import COURSE_IMAGE_PATTERN, NAME_LENGTH_RULE
from .common import (
    COURSE_SLUG_PATTERN,
    Condition,
    Model,
    Resources,
    SecretRef,
)

KIND = "CourseImage"
PLURAL = "courseimages"
SHORT_NAMES = ["cimg"]

NOTEBOOK_PATTERN = r"^[^/\\][^\\]*\.ipynb$"


class Retention(Model):
    keep: int = Field(
        5,
        ge=1,
        le=1000,
        description="How many builds of this course (tags '<course>-<build>') the "
        "registry keeps; older builds expire by lifecycle policy. Tags in use are never expired.",
    )


class CourseImageSpec(Model):
    course: str = Field(
        description="The course slug learners use in launch links (?course=<slug>). Letters, digits, "
        "'.', '_' and '-'; matched case-insensitively. This is not the object's name: "
        "'uai_source-uai.1' is a valid slug.",
        pattern=COURSE_SLUG_PATTERN,
        max_length=63,
    )
    image: str = Field(
        description="The image to run, as 'registry/repository:tag' or '...@sha256:<digest>'. A tag is "
        "resolved to an immutable digest and re-resolved periodically, so a new build pushed under the "
        "same tag is followed.",
        pattern=COURSE_IMAGE_PATTERN,
        max_length=512,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": NAME_LENGTH_RULE,
                    "message": "spec.image: the repository name (before ':tag' or '@digest') may be at most "
                    "255 characters",
                }
            ]
        },
    )
    display_name: str | None = Field(
        None, description="A human title for the course, shown by the hub.", max_length=128
    )
    gpu: Literal["none", "required", "optional"] = Field(
        "none",
        description="GPU use: 'none' never schedules on GPU nodes; 'required' always runs on a GPU node "
        "with one GPU; 'optional' does so only when the launch asks for it (gpu=true).",
    )
    default_notebook: str | None = Field(
        None,
        description="A relative .ipynb path opened when a launch link names no notebook, e.g. intro.ipynb.",
        pattern=NOTEBOOK_PATTERN,
        max_length=512,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!self.split('/').exists(p, p == '..')",
                    "message": "spec.defaultNotebook must not contain '..' segments: give a path inside "
                    "the image's notebook directory, e.g. lessons/intro.ipynb",
                }
            ]
        },
    )
    resources: Resources | None = Field(
        None,
        description="Per-course memory and CPU, overriding the hub's singleuser "
        "defaults for this course's servers.",
    )
    pre_pull: bool = Field(
        True,
        description="Pull this image onto every eligible node ahead of time, so no learner waits for a pull.",
    )
    retention: Retention | None = Field(
        None, description="Registry retention for this course's builds (ECR only)."
    )
    image_pull_secret_ref: SecretRef | None = Field(
        None,
        description="A kubernetes.io/dockerconfigjson Secret with credentials for a private, non-ECR "
        "registry. ECR uses the operator's AWS identity (IRSA) instead.",
    )


class CourseImageStatus(Model):
    observed_generation: int | None = Field(None, description="The generation this status was computed from.")
    resolved_image: str | None = Field(
        None,
        description="The image pinned to its digest (repo@sha256:...): what "
        "learners get. It keeps the last good value while the registry fails.",
    )
    digest: str | None = Field(None, description="The digest spec.image resolved to.")
    resolved_at: str | None = Field(
        None,
        description="When the current digest was first seen (RFC 3339); it moves "
        "only when a new build changes the digest, so re-resolving an unchanged tag "
        "writes nothing.",
    )
    hubs: list[str] | None = Field(
        None, description="The JupyterHubDeployments (namespace/name) that publish this course."
    )
    launch_url: str | None = Field(
        None, description="A link that starts this course on its (first) hub.", alias="launchURL"
    )
    conditions: list[Condition] | None = Field(
        None,
        description="ImageResolved, Published, PrePulled, RetentionApplied and the summary Ready.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


PRINTER_COLUMNS = [
    {"name": "Course", "type": "string", "jsonPath": ".spec.course", "description": "The course slug."},
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Whether learners can start this course.",
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Why it is (not) ready.",
    },
    {
        "name": "Image",
        "type": "string",
        "jsonPath": ".status.resolvedImage",
        "description": "The digest-pinned image learners get.",
    },
    {"name": "Launch", "type": "string", "jsonPath": ".status.launchURL", "description": "The launch link."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
