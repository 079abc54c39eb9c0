"""The CourseImage kind: one course, one image, published to the hubs that select it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

# One grammar for the API server and the operator: the parser checks these same patterns.
from ..registry.reference import COURSE_IMAGE_PATTERN, NAME_LENGTH_RULE
from .common import (
    COURSE_SLUG_PATTERN,
    OBJECT_NAME_PATTERN,
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


# A git remote the operator may poll and a build pod may clone: https, http (no secret over it,
# see the CEL rule) or ssh, never file:// or a local path (no reading the operator's own disk).
GIT_URL_PATTERN = r"^(https?://[^\s/@]+(:[0-9]+)?/\S+|ssh://[^\s/]+/\S+)$"
# A branch or tag as `git ls-remote` takes it (refs/heads/main, main, v1.2).
GIT_REF_PATTERN = r"^(refs/(heads|tags)/)?[A-Za-z0-9._][A-Za-z0-9._/-]{0,199}$"
# A relative path inside the repository: no leading '/', no '..' segment (CEL rules below).
REPO_PATH_PATTERN = r"^[A-Za-z0-9._][A-Za-z0-9._/-]{0,511}$"
BUILD_ARG_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# Kubernetes quantities for build pods' requests and limits ("2", "500m", "4Gi").
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|[KMGTPE]i?)?$"


def _no_dotdot(field: str, example: str) -> dict:
    return {
        "x-kubernetes-validations": [
            {
                "rule": "!self.split('/').exists(p, p == '..')",
                "message": f"{field} must not contain '..' segments: give a path inside the repository, "
                f"e.g. {example}",
            }
        ]
    }


# A key of a Secret's data (what the API server allows there).
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"


class WebhookSecretRef(Model):
    name: str = Field(
        description="A Secret of this namespace (referenced, never copied).",
        pattern=OBJECT_NAME_PATTERN,
        max_length=253,
    )
    key: str = Field(
        "webhook-secret",
        description="The key holding the secret the repository's webhook is configured with.",
        pattern=SECRET_KEY_PATTERN,
        max_length=253,
    )


class GitSource(Model):
    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.secretRef) || !self.url.startsWith('http://')",
                    "message": "spec.build.git.secretRef: a token is never sent over plain http; use an "
                    "https:// or ssh:// URL for a private repository",
                },
            ]
        }
    }

    url: str = Field(
        description="The repository to build from: https://host/path.git or ssh://git@host/path.git "
        "(http:// only for public repositories on an internal server).",
        pattern=GIT_URL_PATTERN,
        max_length=1024,
    )
    ref: str = Field(
        "main",
        description="The branch or tag to follow (main, v2, refs/tags/v2). Every new commit of it is built.",
        pattern=GIT_REF_PATTERN,
        max_length=220,
    )
    path: str | None = Field(
        None,
        description="The build context inside the repository (a directory, relative); unset: the root.",
        pattern=REPO_PATH_PATTERN,
        max_length=512,
        json_schema_extra=_no_dotdot("spec.build.git.path", "courses/uai"),
    )
    secret_ref: SecretRef | None = Field(
        None,
        description="For a private repository: a Secret of this namespace with key 'token' (https: sent "
        "as HTTP basic auth, user 'x-access-token' unless key 'username' is set) or keys "
        "'ssh-privatekey' and 'known_hosts' (ssh). Build pods reference it; it is never copied.",
    )
    webhook_secret_ref: WebhookSecretRef | None = Field(
        None,
        description="This repository's own push webhook secret (GitHub's HMAC secret, GitLab's token), in "
        "a Secret of this namespace. Set: pushes for this repository URL are verified only against the "
        "secrets of the CourseImages building it, no longer against the operator-wide secret, so no other "
        "course author can forge them. A missing Secret refuses this repository's pushes (polling still "
        "builds) and Built says so.",
    )

    @model_validator(mode="after")
    def _checks(self) -> GitSource:
        # The CEL rules, for objects the operator reads (the same messages).
        if self.secret_ref is not None and self.url.startswith("http://"):
            raise ValueError(
                "spec.build.git.secretRef: a token is never sent over plain http; use an https:// or "
                "ssh:// URL for a private repository"
            )
        if self.path and ".." in self.path.split("/"):
            raise ValueError("spec.build.git.path must not contain '..' segments")
        return self


class BuildResources(Model):
    cpu: str | None = Field(
        None,
        description="CPU of a build pod (request and limit), e.g. '2' or '1500m'.",
        pattern=QUANTITY_PATTERN,
    )
    memory: str | None = Field(
        None, description="Memory of a build pod (request and limit), e.g. '4Gi'.", pattern=QUANTITY_PATTERN
    )


class BuildArg(Model):
    name: str = Field(
        description="The ARG name, e.g. PYTHON_VERSION (letters, digits and '_').",
        pattern=BUILD_ARG_NAME_PATTERN,
        max_length=128,
    )
    value: str = Field(
        "", description="Its value (plain text, kept in the image's history).", max_length=4096
    )


class Build(Model):
    git: GitSource = Field(description="Where the course's Dockerfile and files come from.")
    dockerfile: str = Field(
        "Dockerfile",
        description="The Dockerfile, relative to git.path.",
        pattern=REPO_PATH_PATTERN,
        max_length=512,
        json_schema_extra=_no_dotdot("spec.build.dockerfile", "docker/Dockerfile"),
    )
    build_args: list[BuildArg] | None = Field(
        None,
        description="--build-arg pairs, e.g. [{name: PYTHON_VERSION, value: '3.11'}] (plain values: never "
        "put a secret here, they end up in the image's history).",
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    resources: BuildResources | None = Field(None, description="CPU and memory of the build pod.")
    poll_seconds: int = Field(
        120,
        ge=10,
        le=86400,
        description="How often git.ref is checked for a new commit (git ls-remote; one check per "
        "repository and interval, shared by every CourseImage of that repository). A push webhook "
        "makes it immediate.",
    )
    push_secret_ref: SecretRef | None = Field(
        None,
        description="For a non-ECR registry that needs credentials to push: a kubernetes.io/dockerconfigjson "
        "Secret of this namespace, mounted into build pods (never copied). ECR: the operator hands "
        "build pods a short-lived push token from its own AWS identity.",
    )

    @model_validator(mode="after")
    def _checks(self) -> Build:
        if ".." in self.dockerfile.split("/"):
            raise ValueError("spec.build.dockerfile must not contain '..' segments")
        names = [a.name for a in self.build_args or []]
        if len(set(names)) != len(names):
            raise ValueError("spec.build.buildArgs: each name once")
        return self


class CourseImageSpec(Model):
    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.build) || !self.image.contains('@')",
                    "message": "spec.image: with spec.build it names where builds go and the tag learners "
                    "follow ('<repository>:<tag>', e.g. registry.example.edu/courses:uai); a digest "
                    "cannot follow new builds: remove '@sha256:...'",
                },
            ]
        }
    }

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
    build: Build | None = Field(
        None,
        description="Build the image from a git repository: every new commit of git.ref is built with "
        "buildah and pushed as '<repository of spec.image>:<course>-<short commit>' and under spec.image's "
        "own tag, which learners then get (docs/builds.md). A failed build changes nothing learners get.",
    )

    @model_validator(mode="after")
    def _build_needs_a_tag(self) -> CourseImageSpec:
        # The CEL rule above, for objects the operator reads (the same message).
        if self.build is not None and "@" in self.image:
            raise ValueError(
                "spec.image: with spec.build it names where builds go and the tag learners follow "
                "('<repository>:<tag>'); a digest cannot follow new builds: remove '@sha256:...'"
            )
        return self


class BuildRecord(Model):
    commit: str = Field(description="The commit built (full hash).", max_length=64)
    result: Literal["Queued", "Running", "Succeeded", "Failed"] = Field(description="How the build ended.")
    tag: str | None = Field(None, description="The tag pushed ('<course>-<short commit>').", max_length=128)
    digest: str | None = Field(None, description="The digest pushed, on success.", max_length=100)
    started: str | None = Field(None, description="When the build pod started (RFC 3339).")
    duration_seconds: int | None = Field(None, ge=0, description="How long the build took.")
    job: str | None = Field(None, description="The build Job's name.", max_length=63)
    reason: str | None = Field(
        None, description="On failure: why (BuildFailed, CloneFailed, ...).", max_length=64
    )
    message: str | None = Field(
        None,
        description="On failure: the failing step and the last log lines (bounded, secrets masked).",
        max_length=8192,
    )


class BuildStatus(Model):
    ref: str | None = Field(None, description="The git ref followed.", max_length=220)
    latest_commit: str | None = Field(
        None, description="The newest commit of the ref the operator has seen.", max_length=64
    )
    commit: str | None = Field(None, description="The commit of the last good build (what learners get).")
    digest: str | None = Field(None, description="The digest of the last good build.", max_length=100)
    current: BuildRecord | None = Field(None, description="The build queued or running now, if any.")
    last: BuildRecord | None = Field(None, description="The last finished build (good or not).")
    history: list[BuildRecord] | None = Field(
        None, description="The last 5 finished builds, newest first.", max_length=5
    )
    rebuild: str | None = Field(
        None,
        description="The value of annotation coursehub.dev/rebuild last acted on (a new value rebuilds).",
        max_length=256,
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
    build: BuildStatus | None = Field(
        None, description="Builds from spec.build: the last good one, the current one, the last 5."
    )
    conditions: list[Condition] | None = Field(
        None,
        description="Built (with spec.build), ImageResolved, Published, PrePulled, RetentionApplied and the "
        "summary Ready.",
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
        "name": "Build",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Built")].reason',
        "description": "The state of the newest build (BuildQueued, Building, BuildFailed, Built).",
        "priority": 0,
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
