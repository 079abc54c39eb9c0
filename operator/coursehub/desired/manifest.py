"""Pure: `coursehub render`: a JupyterHubDeployment manifest -> its validated z2jh values."""

from __future__ import annotations

from pydantic import ValidationError

from ..api.jupyterhubdeployment import JupyterHubDeploymentSpec
from .policy import ChartPolicy, check_spec
from .values import render_values
from .values_schema import validate_values


def _pydantic_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"spec.{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def render_values_from_manifest(manifest: dict, chart_policy: ChartPolicy | None = None) -> dict:
    """Parse a JupyterHubDeployment manifest, check it as the operator would, render and validate.

    Raises ValueError (InvalidValues, InvalidChart for refusals) with a message naming the
    field. `chart_policy` defaults to the operator's default (the official z2jh repository).
    No Secret is read, so the secrets-version annotation is absent from this output.
    """
    if not isinstance(manifest, dict) or manifest.get("kind") != "JupyterHubDeployment":
        raise ValueError("not a JupyterHubDeployment manifest")
    meta = manifest.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise ValueError("metadata.name is required")
    namespace = meta.get("namespace") or "default"
    spec_raw = manifest.get("spec")
    if not isinstance(spec_raw, dict):
        raise ValueError("spec is required")
    try:
        spec = JupyterHubDeploymentSpec.model_validate(spec_raw)
    except ValidationError as e:
        raise ValueError(_pydantic_message(e)) from None
    check_spec(spec, chart_policy or ChartPolicy())
    values = render_values(name, namespace, spec)
    validate_values(values)
    return values
