"""docs/reference.md is generated from the CRDs (themselves generated from the models).

Like the CRD drift test: a model change without regenerating the page fails here. Regenerate
with `uv run coursehub docs --write` (from the checkout's root).
"""

from __future__ import annotations

from coursehub import crds, docs
from coursehub_dev.paths import REPO_ROOT


def test_reference_is_up_to_date():
    committed = (REPO_ROOT / docs.REFERENCE_PATH).read_text()
    assert committed == docs.reference_markdown(), (
        "docs/reference.md is stale: regenerate it with `uv run coursehub docs --write`"
    )


def test_every_schema_field_is_documented():
    text = docs.reference_markdown()
    for crd in crds.all_crds().values():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for part in ("spec", "status"):
            for path, node, _required in docs.fields(schema["properties"][part]):
                assert f"| `{part}.{path}` |" in text
                # Every field the user can read in `kubectl explain` has words here too.
                assert node.get("description"), f"{part}.{path} has no description in the model"


def test_defaults_come_from_the_models():
    text = docs.reference_markdown()
    assert "| `spec.gpu` | string | default `none`;" in text
    assert "| `spec.retention.keep` | integer | default `5`;" in text


def test_every_operator_setting_is_documented():
    from coursehub.settings import Settings, env_name

    text = docs.reference_markdown()
    for name, info in Settings.model_fields.items():
        assert f"| `{env_name(name)}` |" in text
        assert info.description, f"setting {name} has no description"
    assert "| `COURSEHUB_RESOLVE_INTERVAL` | number | `300` | > 0 |" in text
    assert "| `COURSEHUB_DEBOUNCE_SECONDS` | number | `0.3` | ≥ 0 |" in text
