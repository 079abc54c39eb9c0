"""Generate the CRDs from the pydantic models: `coursehub crds` prints them, `--write DIR` writes them
(the checkout's crds/*.yaml are its output).

Pydantic emits JSON Schema with $refs, anyOf-null for optionals and titles; Kubernetes wants
a structural OpenAPI v3 schema: every node typed, no $ref, no nulls. This module translates
one into the other and adds what only the API server understands (CEL rules, list types).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .api import common, courseimage, jupyterhubdeployment

# Keys pydantic emits that a CRD schema must not carry (defaults are applied by the
# operator's models, not written into objects by the API server, so applied specs stay
# byte-identical for GitOps diffing).
_DROP = {"title", "default"}


def _structural(node: dict, defs: dict) -> dict:
    node = copy.deepcopy(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        # Field-level keys (description, CEL on the field) win over the model's own.
        extra_rules = node.pop("x-kubernetes-validations", []) + target.pop("x-kubernetes-validations", [])
        target.update(node)
        if extra_rules:
            target["x-kubernetes-validations"] = extra_rules
        node = target
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) == 1:
            inner = _structural(options[0], defs)
            rules = node.pop("x-kubernetes-validations", []) + inner.pop("x-kubernetes-validations", [])
            inner.update(node)
            if rules:
                inner["x-kubernetes-validations"] = rules
            node = inner
        elif {o.get("type") for o in options} == {"integer", "string"}:
            node["x-kubernetes-int-or-string"] = True
        else:
            raise ValueError(f"cannot express {options} structurally")
    for k in _DROP:
        node.pop(k, None)
    # JSON Schema's numeric exclusive bounds are OpenAPI 3.0's boolean flags.
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(node.get(flag), (int, float)) and not isinstance(node.get(flag), bool):
            node[bound] = node.pop(flag)
            node[flag] = True
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if "const" in node:
        node["enum"] = [node.pop("const")]
        node.setdefault("type", "string")
    if node.get("type") == "object":
        props = node.get("properties")
        if props is not None:
            node["properties"] = {k: _structural(v, defs) for k, v in props.items()}
            node.pop("additionalProperties", None)
        else:
            ap = node.get("additionalProperties")
            if isinstance(ap, dict) and ap:
                node["additionalProperties"] = _structural(ap, defs)
            else:
                # A free-form object (dict[str, Any]): keep whatever the user wrote.
                node.pop("additionalProperties", None)
                node["x-kubernetes-preserve-unknown-fields"] = True
    elif node.get("type") == "array":
        node["items"] = _structural(node["items"], defs)
    elif "type" not in node and not node.get("x-kubernetes-int-or-string"):
        raise ValueError(f"untyped schema node: {node}")
    return node


def model_schema(model) -> dict:
    raw = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def _crd(mod, spec_model, status_model, *, spec_description: str) -> dict:
    spec = model_schema(spec_model)
    spec["description"] = spec_description
    status = model_schema(status_model)
    status["description"] = f"The observed state of the {mod.KIND}, written only by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{mod.PLURAL}.{common.GROUP}"},
        "spec": {
            "group": common.GROUP,
            "names": {
                "kind": mod.KIND,
                "listKind": f"{mod.KIND}List",
                "plural": mod.PLURAL,
                "singular": mod.KIND.lower(),
                "shortNames": list(mod.SHORT_NAMES),
                "categories": ["coursehub"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": common.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": mod.PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (mod.__doc__ or "").strip(),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "The API version: coursehub.dev/v1alpha1.",
                                },
                                "kind": {"type": "string", "description": f"The kind: {mod.KIND}."},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def course_image_crd() -> dict:
    return _crd(
        courseimage,
        courseimage.CourseImageSpec,
        courseimage.CourseImageStatus,
        spec_description="The desired state of a course: its slug, its image and how learners get it.",
    )


def jupyterhub_deployment_crd() -> dict:
    return _crd(
        jupyterhubdeployment,
        jupyterhubdeployment.JupyterHubDeploymentSpec,
        jupyterhubdeployment.JupyterHubDeploymentStatus,
        spec_description="The desired state of a hub: chart, domain, auth, gateway, database, culling, "
        "courses and learner defaults.",
    )


def all_crds() -> dict[str, dict]:
    """File name -> CRD document."""
    return {"CourseImage.yaml": course_image_crd(), "JupyterHubDeployment.yaml": jupyterhub_deployment_crd()}


def render(crd: dict) -> str:
    header = "# Generated by `coursehub crds` from operator/coursehub/api; do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=120)


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, crd in all_crds().items():
        path = directory / name
        path.write_text(render(crd))
        written.append(path)
    return written


def walk_properties(schema: dict, path: str = "") -> Any:
    """Yield (dotted path, node) for every property below a schema (for tests and docs)."""
    for name, node in (schema.get("properties") or {}).items():
        p = f"{path}.{name}" if path else name
        yield p, node
        yield from walk_properties(node, p)
        if node.get("type") == "array":
            yield from walk_properties(node["items"], p + "[]")
