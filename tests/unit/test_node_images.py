"""Forgetting an image on a real node (dev/coursehub_dev/nodeimages.py): the pure parts.

The benchmark's "not pre-pulled" launches must really pull. The old removal took only the names
that spell the repository and left the CRI plugin's ID record (`sha256:<config>`), which keeps
the whole image (a 2.6 s "cold" launch): `plan_forget` takes every record of the image.
"""

from __future__ import annotations

import hashlib

from coursehub_dev.nodeimages import (
    Forgotten,
    ImageParts,
    ImageRecord,
    Snapshot,
    chain_ids,
    parse_image_list,
    parse_snapshots,
    plan_forget,
)

REG = "10.210.0.1:5000"
COURSE_REF = f"{REG}/coursehub/course-clustering:0123456789abcdef0123"
M_COURSE, M_TOOLS, M_HUB = ("sha256:" + c * 64 for c in "abc")
CFG_COURSE = "sha256:" + "d" * 64
BASE, LAB, HUBLAYER, TOOLS = ("sha256:" + c * 64 for c in "1234")

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _row(ref: str, target: str, size: str) -> str:
    return f"{ref} {MANIFEST} {target} {size} linux/amd64 io.cri-containerd.image=managed"


# `ctr -n k8s.io images ls` after kubelet pulled the course image, network-tools and the hub
IMAGES_LS = "\n".join(
    [
        "REF TYPE DIGEST SIZE PLATFORMS LABELS",
        _row(COURSE_REF, M_COURSE, "152.3 MiB"),
        _row(f"{REG}/coursehub/course-clustering@{M_COURSE}", M_COURSE, "152.3 MiB"),
        _row(CFG_COURSE, M_COURSE, "152.3 MiB"),
        _row("quay.io/jupyterhub/k8s-network-tools:4.4.0", M_TOOLS, "40.1 MiB"),
        _row("quay.io/jupyterhub/k8s-hub:4.4.0", M_HUB, "200.0 MiB"),
        _row("sha256:" + "e" * 64, M_HUB, "200.0 MiB"),
    ]
)


def test_image_list_gives_every_name_with_its_target():
    records = parse_image_list(IMAGES_LS)
    assert len(records) == 6
    assert records[0] == ImageRecord(COURSE_REF, M_COURSE)
    assert records[2] == ImageRecord(CFG_COURSE, M_COURSE)  # the CRI plugin's ID record


def test_snapshots_with_and_without_parent():
    text = f"KEY PARENT KIND\n{BASE} Committed\n{LAB} {BASE} Committed\nabc123 {LAB} Active\n"
    assert parse_snapshots(text) == [
        Snapshot(BASE, "", "Committed"),
        Snapshot(LAB, BASE, "Committed"),
        Snapshot("abc123", LAB, "Active"),
    ]


def test_chain_ids_follow_the_image_spec():
    a, b, c = ("sha256:" + x * 64 for x in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []


def _parts():
    return {
        M_COURSE: ImageParts(
            {M_COURSE, CFG_COURSE, BASE, LAB}, {BASE: 30_000_000, LAB: 120_000_000}, {"c1", "c2"}
        ),
        M_TOOLS: ImageParts({M_TOOLS, BASE, TOOLS}, {BASE: 30_000_000, TOOLS: 10_000_000}, {"c1", "t2"}),
        M_HUB: ImageParts({M_HUB, BASE, HUBLAYER}, {BASE: 30_000_000, HUBLAYER: 170_000_000}, {"c1", "h2"}),
    }


def test_every_record_of_the_image_goes_the_id_record_included():
    plan = plan_forget(parse_image_list(IMAGES_LS), ["coursehub/course-"], _parts())
    # the old removal took only names containing the repository and left CFG_COURSE behind
    assert CFG_COURSE in plan.names
    assert plan.names == sorted([COURSE_REF, f"{REG}/coursehub/course-clustering@{M_COURSE}", CFG_COURSE])


def test_blobs_and_layers_shared_with_staying_images_are_kept_and_named():
    plan = plan_forget(
        parse_image_list(IMAGES_LS), ["coursehub/course-", "jupyterhub/k8s-network-tools"], _parts()
    )
    assert plan.blobs == {M_COURSE, CFG_COURSE, LAB, M_TOOLS, TOOLS}  # not BASE: the hub uses it
    assert plan.chains == {"c2", "t2"}
    assert plan.layer_bytes == 130_000_000
    assert plan.kept == {BASE: ["quay.io/jupyterhub/k8s-hub:4.4.0"]}  # its name, not its ID record


def test_nothing_matching_removes_nothing():
    plan = plan_forget(parse_image_list(IMAGES_LS), ["coursehub/course-uai-1"], _parts())
    assert (plan.names, plan.blobs, plan.chains) == ([], set(), set())
    assert str(Forgotten("real-node-0")) == "real-node-0: nothing to forget"
