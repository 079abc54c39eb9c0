"""Pure: the z2jh chart's values schema and defaults (shipped in the package), and messages
that name the offending key when the chart would refuse a hub's values."""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema

Z2JH_DIR = Path(__file__).parent / "z2jh"
Z2JH_VERSION = "4.4.0"


class InvalidValues(ValueError):
    """The values would be refused by the z2jh chart; `path` names the offending key."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


@functools.cache
def z2jh_schema() -> dict:
    return json.loads((Z2JH_DIR / "values.schema.json").read_text())


@functools.cache
def _z2jh_defaults_json() -> str:
    return (Z2JH_DIR / "values.defaults.json").read_text()


def z2jh_defaults() -> dict:
    """A fresh copy of the chart's default values (callers may mutate it)."""
    return json.loads(_z2jh_defaults_json())


@functools.cache
def _validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(z2jh_schema())


def helm_coalesce(defaults: dict, values: dict) -> dict:
    """What the chart's templates (and its schema check) see: values over defaults, nulls removed."""
    out = dict(defaults)
    for k, v in values.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = helm_coalesce(out[k], v)
        elif isinstance(v, dict):
            out[k] = helm_coalesce({}, v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --- validation ------------------------------------------------------------


def _join(prefix: str, parts) -> str:
    path = prefix
    for p in parts:
        path = f"{path}[{p}]" if isinstance(p, int) else (f"{path}.{p}" if path else str(p))
    return path


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def _extra_properties(error: jsonschema.ValidationError) -> list[str]:
    props = set(error.schema.get("properties", {}))
    patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
    inst = error.instance if isinstance(error.instance, dict) else {}
    return sorted(k for k in inst if k not in props and not any(p.search(k) for p in patterns))


def _describe(error: jsonschema.ValidationError, prefix: str) -> tuple[str, str]:
    where = list(error.absolute_path)
    suffix = f"by the z2jh {Z2JH_VERSION} schema"
    if error.validator == "additionalProperties":
        extras = _extra_properties(error) or ["?"]
        path = _join(prefix, [*where, extras[0]])
        return path, f"{path}: additional property '{extras[0]}' is not allowed {suffix}"
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        path = _join(prefix, where + missing[:1])
        return path, f"{path}: is required {suffix}"
    path = _join(prefix, where)
    if error.validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return (
            path,
            f"{path}: {_short(error.instance)} is not of type {' or '.join(types)} (required {suffix})",
        )
    if error.validator == "enum":
        return path, (
            f"{path}: {_short(error.instance)} is not one of "
            f"{', '.join(_short(v) for v in error.validator_value)} (required {suffix})"
        )
    return path, f"{path}: {error.message} (refused {suffix})"


def validate_values(values: dict, *, prefix: str = "spec.values") -> None:
    """Raise InvalidValues if the chart would refuse these values (merged over its defaults).

    `prefix` is put before the key path in messages: the operator's own keys are tested
    to validate, so any refusal comes from spec.values.
    """
    merged = helm_coalesce(z2jh_defaults(), values)
    errors = sorted(
        _validator().iter_errors(merged), key=lambda e: ([str(p) for p in e.absolute_path], e.validator)
    )
    if not errors:
        return
    path, message = _describe(errors[0], prefix)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    raise InvalidValues(path, message)
