"""The sharded allowlist contract: what the operator writes is what the hub module reads."""

from __future__ import annotations

import json

import pytest

from coursehub.api.courseimage import CourseImageSpec
from coursehub.api.jupyterhubdeployment import JupyterHubDeploymentSpec
from coursehub.desired import allowlist as allowlist_mod
from coursehub.desired.courses import CourseRecord, HubRecord
from coursehub.hub import course_spawner as cs


def hub() -> HubRecord:
    spec = {
        "chart": {"path": "/charts/jupyterhub"},
        "domain": "nb.example.edu",
        "database": {"type": "sqlite-memory"},
        "auth": {"mode": "tmp", "allowUngated": True},
        "courses": {"default": "00001" + "x" * 58},
    }
    return HubRecord(
        "jupyter", "learn", "u", "2026-01-01T00:00:00Z", 1, JupyterHubDeploymentSpec.model_validate(spec)
    )


def course(i: int) -> CourseRecord:
    spec = {
        "course": f"{i:05d}" + "x" * 58,
        "image": "r.example.edu/" + "n" * 480 + ":t",
        "displayName": "D" * 128,
        "defaultNotebook": "nb/" + "p" * 500 + ".ipynb",
        "gpu": "optional" if i % 7 == 0 else "none",
    }
    image = "r.example.edu/" + "n" * 480 + f"@sha256:{i:064d}"
    return CourseRecord(
        "jupyter",
        f"c{i}",
        f"u{i}",
        "2026-01-01T00:00:00Z",
        1,
        (),
        CourseImageSpec.model_validate(spec),
        image,
    )


def write(courses: list[CourseRecord]) -> tuple[dict, list[dict]]:
    h = hub()
    winners = {c.slug: c for c in courses}
    published = {c.slug: c.resolved_image for c in courses}
    return allowlist_mod.allowlist_objects(h, allowlist_mod.allowlist_document(h, winners, published))


def read(index: dict, shards: list[dict]) -> cs.Allowlist:
    text = index["data"][allowlist_mod.ALLOWLIST_KEY]
    names = cs.shard_names(text)
    if names:
        texts = {s["metadata"]["name"]: s["data"][cs.ALLOWLIST_SHARD_KEY] for s in shards}
        text = cs.expand_sharded(text, texts)
    return cs.parse_allowlist(text)


def test_the_key_names_agree():
    assert cs.ALLOWLIST_SHARD_KEY == allowlist_mod.SHARD_KEY
    assert cs.ALLOWLIST_KEY == allowlist_mod.ALLOWLIST_KEY
    assert cs.ALLOWLIST_CONFIGMAP == allowlist_mod.ALLOWLIST_CONFIGMAP


def test_a_small_allowlist_stays_inline():
    index, shards = write([course(i) for i in range(10)])
    assert shards == [] and cs.shard_names(index["data"][allowlist_mod.ALLOWLIST_KEY]) == []
    assert len(read(index, shards).courses) == 10


def test_a_sharded_allowlist_reads_back_whole_on_the_hub():
    courses = [course(i) for i in range(2_000)]
    index, shards = write(courses)
    assert len(shards) >= 2
    allowlist = read(index, shards)
    assert len(allowlist.courses) == 2_000 and allowlist.default == courses[1].slug
    got = allowlist.courses[courses[7].slug]
    assert got.image == courses[7].resolved_image and got.gpu == "optional"


def test_the_hub_refuses_a_sharded_index_with_a_missing_shard_or_foreign_names():
    index, shards = write([course(i) for i in range(2_000)])
    text = index["data"][allowlist_mod.ALLOWLIST_KEY]
    with pytest.raises(cs.AllowlistError, match="missing"):
        cs.expand_sharded(text, {s["metadata"]["name"]: s["data"]["courses.json"] for s in shards[1:]})
    doc = json.loads(text)
    doc["shards"] = ["kube-root-ca.crt"]
    assert cs.shard_names(json.dumps(doc)) == []
    # Without its shards a version-2 index is not an allowlist: the hub keeps its last good one.
    with pytest.raises(cs.AllowlistError):
        cs.parse_allowlist(json.dumps(doc))
