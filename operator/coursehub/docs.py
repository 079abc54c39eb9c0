"""docs/reference.md, generated from the CRDs (which are generated from the API models)
and from the operator's Settings model.

The CRD schemas are what the API server enforces and `kubectl explain` shows, so the
reference walks them: every field with its type, its validation and its description.
Defaults are not in the CRDs (the operator applies them, so applied specs stay as
written); they are read from the pydantic models' JSON schema along the same paths.
The operator settings section walks coursehub.settings.Settings the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import crds
from .api import courseimage, jupyterhubdeployment
from .settings import Settings, env_name

# Relative to the checkout `coursehub docs --write` runs in: an installed wheel has no docs/.
REFERENCE_PATH = Path("docs") / "reference.md"

_MODELS = {
    "CourseImage": (courseimage.CourseImageSpec, courseimage.CourseImageStatus),
    "JupyterHubDeployment": (
        jupyterhubdeployment.JupyterHubDeploymentSpec,
        jupyterhubdeployment.JupyterHubDeploymentStatus,
    ),
}


# -- defaults from the models ----------------------------------------------------------
def _defaults(model) -> dict[str, Any]:
    """Dotted field path -> default, for fields whose default is not None."""
    raw = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs = raw.get("$defs", {})
    out: dict[str, Any] = {}

    def deref(node: dict) -> dict:
        while "$ref" in node:
            node = {**defs[node["$ref"].split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            if len(options) == 1:
                node = {**deref(options[0]), **{k: v for k, v in node.items() if k != "anyOf"}}
        return node

    def walk(node: dict, path: str) -> None:
        node = deref(node)
        for name, child in (node.get("properties") or {}).items():
            p = f"{path}.{name}" if path else name
            if child.get("default") is not None:
                out[p] = child["default"]
            walk(child, p)
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]")

    walk(raw, "")
    return out


# -- formatting ------------------------------------------------------------------------
def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: Any) -> str:
    s = text if isinstance(text, str) and text else json.dumps(text, sort_keys=True)
    s = s.replace("|", "\\|")
    # A pattern may contain backticks; a longer fence keeps it one code span.
    fence = "``" if "`" in s else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def type_of(node: dict) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "integer or string"
    t = node.get("type", "")
    if t == "array":
        return f"[]{type_of(node.get('items') or {})}"
    if t == "object":
        if node.get("properties"):
            return "object"
        ap = node.get("additionalProperties")
        if isinstance(ap, dict) and ap:
            return f"map[string]{type_of(ap)}"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return "object (free-form)"
        return "object"
    if node.get("format"):
        return f"{t} ({node['format']})"
    return t


def validation_of(node: dict, *, required: bool, default: Any = None) -> list[str]:
    out = []
    if required:
        out.append("required")
    if default is not None:
        out.append(f"default {_code(default)}")
    if "enum" in node:
        out.append("one of " + ", ".join(_code(v) for v in node["enum"]))
    for key, word in (("minimum", "≥"), ("maximum", "≤")):
        if key in node:
            exclusive = node.get("exclusiveMinimum" if key == "minimum" else "exclusiveMaximum") is True
            sym = {"≥": ">", "≤": "<"}[word] if exclusive else word
            out.append(f"{sym} {node[key]}")
    for key, text in (
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minProperties", "min properties"),
        ("maxProperties", "max properties"),
    ):
        if key in node:
            out.append(f"{text} {node[key]}")
    if "pattern" in node:
        out.append(f"pattern {_code(node['pattern'])}")
    if node.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(node.get("x-kubernetes-list-map-keys") or [])
        out.append(f"list keyed by {keys}")
    elif node.get("x-kubernetes-list-type") == "set":
        out.append("unique items")
    for rule in node.get("x-kubernetes-validations") or []:
        out.append(f"rule: {rule.get('message') or _code(rule['rule'])}")
    return out


def fields(schema: dict, path: str = "") -> Iterator[tuple[str, dict, bool]]:
    """(dotted path, node, required) for every field below `schema`, depth first."""
    required = set(schema.get("required") or [])
    for name, node in (schema.get("properties") or {}).items():
        p = f"{path}.{name}" if path else name
        yield p, node, name in required
        yield from fields(node, p)
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            yield from fields(node["items"], p + "[]")
        ap = node.get("additionalProperties")
        if isinstance(ap, dict) and ap.get("properties"):
            yield from fields(ap, p + ".<key>")


def _table(schema: dict, prefix: str, defaults: dict[str, Any]) -> list[str]:
    lines = ["| Field | Type | Validation | Description |", "|---|---|---|---|"]
    for path, node, required in fields(schema):
        checks = validation_of(node, required=required, default=defaults.get(path))
        lines.append(
            f"| `{prefix}.{path}` | {_cell(type_of(node))} | {'; '.join(checks) or '—'} "
            f"| {_cell(node.get('description', ''))} |"
        )
    return lines


def _kind_section(crd: dict) -> list[str]:
    names = crd["spec"]["names"]
    kind = names["kind"]
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    spec_model, status_model = _MODELS[kind]
    out = [
        f"## {kind}",
        "",
        _cell(schema.get("description", "")),
        "",
        f"- API version: `{crd['spec']['group']}/{version['name']}`, scope: {crd['spec']['scope']}",
        f"- Names: `{names['plural']}`, `{names['singular']}`"
        + "".join(f", `{s}`" for s in names.get("shortNames", []))
        + f" (category `{', '.join(names.get('categories', []))}`)",
        "- Subresources: " + ", ".join(sorted(version.get("subresources", {}))),
        "",
    ]
    cols = version.get("additionalPrinterColumns") or []
    if cols:
        out += ["`kubectl get` columns:", "", "| Column | Source | Meaning |", "|---|---|---|"]
        out += [f"| {c['name']} | {_code(c['jsonPath'])} | {_cell(c.get('description', ''))} |" for c in cols]
        out.append("")
    for part, model in (("spec", spec_model), ("status", status_model)):
        node = schema["properties"][part]
        out += [f"### {kind} {part}", "", _cell(node.get("description", "")), ""]
        out += _table(node, part, _defaults(model))
        out.append("")
    return out


# -- operator settings -----------------------------------------------------------------
_SETTING_TYPES = {
    "number": "number",
    "integer": "integer",
    "boolean": "boolean",
    "string": "string",
    "array": "comma-separated list",
}


def _setting_type(node: dict) -> str:
    options = [o for o in node.get("anyOf", [node]) if o.get("type") != "null"]
    return " or ".join(_SETTING_TYPES[o["type"]] for o in options)


def _setting_checks(node: dict) -> list[str]:
    out = []
    for key, sym in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ):
        if key in node:
            out.append(f"{sym} {node[key]}")
    if "pattern" in node:
        out.append(f"pattern {_code(node['pattern'])}")
    return out


def _setting_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, list):
        return _code(",".join(value)) if value else "empty"
    if isinstance(value, bool):
        return _code("true" if value else "false")
    return _code(str(value))


def settings_markdown() -> list[str]:
    """The operator settings section: one row per field of coursehub.settings.Settings."""
    props = Settings.model_json_schema(mode="validation")["properties"]
    out = [
        "## Operator settings",
        "",
        "Environment variables of `coursehub run` (the operator chart sets them from its values). "
        "A bad value stops the operator at startup with an error naming the variable. Booleans "
        "take `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off`.",
        "",
        "| Variable | Type | Default | Validation | Description |",
        "|---|---|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        node = props[info.validation_alias if isinstance(info.validation_alias, str) else name]
        out.append(
            f"| `{env_name(name)}` | {_setting_type(node)} | {_setting_default(node.get('default'))} "
            f"| {'; '.join(_setting_checks(node)) or '—'} | {_cell(node.get('description', ''))} |"
        )
    return [*out, ""]


def reference_markdown() -> str:
    """The whole reference page, deterministic (the drift test compares it byte for byte)."""
    out = [
        "# API reference",
        "",
        "<!-- Generated by `coursehub docs` (coursehub.docs.reference_markdown) from the CRDs and the "
        "Settings model; do not edit. -->",
        "",
        "Both kinds are in API group `coursehub.dev`, version `v1alpha1`, namespaced, with a "
        "status subresource. Conditions follow `metav1.Condition` (`type`, `status`, `reason`, "
        "`message`, `lastTransitionTime`, `observedGeneration`); `status.observedGeneration` tells "
        "which generation of the spec the status describes. `kubectl explain <kind>.spec` shows the "
        "same descriptions.",
        "",
    ]
    for crd in sorted(crds.all_crds().values(), key=lambda c: c["spec"]["names"]["kind"]):
        out += _kind_section(crd)
    out += settings_markdown()
    return "\n".join(out).rstrip("\n") + "\n"


def write_reference(path: Path = REFERENCE_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(reference_markdown())
    return path
