"""Types shared by both kinds: conditions, references, selectors, resources."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "coursehub.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Kubernetes quantities as z2jh takes them for memory ("4G", "512M", "2Gi").
MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$"
# A DNS-1123 subdomain (Secret names, ConfigMap names).
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
# A course slug as learners type it in ?course=: letters, digits, '.', '_' and '-'.
COURSE_SLUG_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
# A condition reason: CamelCase, as metav1.Condition requires.
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_wire(self) -> dict:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Condition(Model):
    """The shape of metav1.Condition."""

    type: str = Field(description="Type of condition in CamelCase, e.g. Ready.", max_length=316)
    status: Literal["True", "False", "Unknown"] = Field(
        description="Status of the condition: True, False or Unknown."
    )
    observed_generation: int | None = Field(
        None,
        ge=0,
        description="The .metadata.generation the condition was computed from; if it is older than the "
        "object's generation, the condition is out of date.",
    )
    last_transition_time: str = Field(
        description="When the condition last changed status (RFC 3339); it does not move when only "
        "the message does.",
        json_schema_extra={"format": "date-time"},
    )
    reason: str = Field(
        description="A CamelCase word that says why, for humans and tools to search for.",
        max_length=1024,
        pattern=REASON_PATTERN,
    )
    message: str = Field(
        "", description="A human readable explanation of the condition, saying what to fix.", max_length=32768
    )


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class SecretKeyRef(Model):
    name: str = Field(
        description="Name of a Secret in the same namespace. The operator reads it; it never copies "
        "its content into status, logs or Helm values.",
        pattern=OBJECT_NAME_PATTERN,
        max_length=253,
    )
    key: str = Field(description="The key inside the Secret.", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)


class SecretRef(Model):
    name: str = Field(
        description="Name of a Secret in the same namespace (referenced, never copied).",
        pattern=OBJECT_NAME_PATTERN,
        max_length=253,
    )


class LabelSelectorRequirement(Model):
    key: str = Field(description="The label key the selector applies to.", max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to the values: In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] | None = Field(
        None, description="Values for In and NotIn; empty for Exists and DoesNotExist.", max_length=256
    )


class LabelSelector(Model):
    """metav1.LabelSelector: an empty selector matches everything."""

    match_labels: dict[str, str] | None = Field(
        None, description="Labels that must all be present with these values."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        None, description="Requirements that must all hold.", max_length=64
    )

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        for k, v in (self.match_labels or {}).items():
            if labels.get(k) != v:
                return False
        for req in self.match_expressions or []:
            present = req.key in labels
            vals = req.values or []
            if req.operator == "In" and (not present or labels[req.key] not in vals):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in vals:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


class MemoryResources(Model):
    limit: str | None = Field(
        None,
        description="Memory limit of a learner's server, e.g. 4G.",
        pattern=MEMORY_PATTERN,
        max_length=32,
    )
    guarantee: str | None = Field(
        None,
        description="Memory a learner's server is guaranteed, e.g. 2G.",
        pattern=MEMORY_PATTERN,
        max_length=32,
    )


class CpuResources(Model):
    limit: float | None = Field(
        None, gt=0, le=1024, description="CPU cores a learner's server may use at most."
    )
    guarantee: float | None = Field(
        None, gt=0, le=1024, description="CPU cores a learner's server is guaranteed."
    )


class Resources(Model):
    memory: MemoryResources | None = Field(None, description="Memory limit and guarantee.")
    cpu: CpuResources | None = Field(
        None, description="CPU limit and guarantee, in cores (0.25 is a quarter core)."
    )
