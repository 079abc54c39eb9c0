"""The committed CRDs are exactly what the models generate, and they teach (descriptions)."""

from __future__ import annotations

import pytest

from coursehub import crds
from coursehub_dev.paths import CRD_DIR


@pytest.mark.parametrize("name", sorted(crds.all_crds()))
def test_committed_crd_matches_models(name):
    committed = (CRD_DIR / name).read_text()
    assert committed == crds.render(crds.all_crds()[name]), (
        f"crds/{name} drifted from operator/coursehub/api: run `uv run coursehub crds --write crds`"
    )


@pytest.mark.parametrize("name", sorted(crds.all_crds()))
def test_every_field_has_a_description(name):
    schema = crds.all_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [
        p for p, node in crds.walk_properties(schema) if p != "metadata" and not node.get("description")
    ]
    assert not missing


@pytest.mark.parametrize("name", sorted(crds.all_crds()))
def test_schema_is_structural(name):
    """Every node has a type (or is int-or-string / preserve-unknown), no $ref, no nullable anyOf."""
    schema = crds.all_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def check(node, path):
        assert "$ref" not in node and "anyOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        for k, v in (node.get("properties") or {}).items():
            check(v, f"{path}.{k}")
        if node.get("type") == "array":
            check(node["items"], path + "[]")

    check(schema, "")


def test_status_subresource_and_columns():
    for crd in crds.all_crds().values():
        v = crd["spec"]["versions"][0]
        assert v["subresources"] == {"status": {}}
        cols = {c["name"] for c in v["additionalPrinterColumns"]}
        assert {"Ready", "Reason", "Age"} <= cols
    assert {"Course", "Image"} <= {
        c["name"] for c in crds.course_image_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert {"Domain", "Courses"} <= {
        c["name"] for c in crds.jupyterhub_deployment_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    }


def test_short_names():
    assert crds.course_image_crd()["spec"]["names"]["shortNames"] == ["cimg"]
    assert crds.jupyterhub_deployment_crd()["spec"]["names"]["shortNames"] == ["jhd"]
