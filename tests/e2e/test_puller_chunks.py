"""A hub's pre-pullers split into DaemonSets of at most COURSEHUB_PULLER_IMAGES_MAX course images
(issue 16), on the local control plane with a real operator process.

Every course is in exactly one chunk, every chunk rolls out on the nodes and its courses turn
PrePulled; a new course rolls out only the chunk that takes it, and a chunk no course needs any
more is deleted. (A 2,000-course hub in one DaemonSet would pass etcd's 1.5 MiB object limit.)
The hub sees its pullers through the watch, not a LIST per round.
"""

from __future__ import annotations

import pytest
import yaml

from coursehub.desired import puller
from coursehub_dev import samples
from coursehub_dev.samples import course_manifest
from fixtures.cluster import get_yaml, wait_until

pytestmark = pytest.mark.e2e

IMAGES_MAX = 2


def apply(cluster, ns, *objs):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(objs))


def pullers(cluster, ns) -> dict[str, dict]:
    items = get_yaml(cluster, "daemonsets", "-n", ns, "-l", "app.kubernetes.io/name=coursehub-puller")[
        "items"
    ]
    return {ds["metadata"]["name"]: ds for ds in items}


def prepulled(cluster, ns) -> dict[str, str]:
    out = {}
    for c in get_yaml(cluster, "courseimages", "-n", ns)["items"]:
        cond = next(
            (x for x in (c.get("status") or {}).get("conditions", []) if x["type"] == "PrePulled"), {}
        )
        out[c["metadata"]["name"]] = f"{cond.get('status')}/{cond.get('reason')}"
    return out


def all_rolled_out(cluster, ns, names: set[str]) -> bool:
    live = pullers(cluster, ns)
    return set(live) == names and all(puller.rolled_out(ds) for ds in live.values())


@pytest.fixture
def chunked_hub(cluster, namespace, operator_factory, oci_registry):
    # No LIST of the pullers after the first round (an hour apart): each rollout below reaches
    # the hub through the watch (HubReconciler.note_puller) or the test times out.
    env = {"COURSEHUB_PULLER_IMAGES_MAX": str(IMAGES_MAX), "COURSEHUB_PULLER_RELIST_SECONDS": "3600"}
    op = operator_factory([namespace], env=env)
    apply(cluster, namespace, samples.hub_manifest("learn"))
    return namespace, oci_registry, op


def test_pullers_are_split_into_chunks_and_a_change_rolls_out_only_its_own(cluster, chunked_hub, unique_repo):
    ns, reg, op = chunked_hub
    slugs = [f"chunk-{i}" for i in range(5)]
    refs = {}
    for s in [*slugs, "chunk-5"]:
        digest = reg.push_image(unique_repo, s, s)
        refs[s] = f"{reg.host}/{unique_repo}@{digest}"
    apply(cluster, ns, *(course_manifest(s, s, reg.ref(unique_repo, s)) for s in slugs))

    first = {"coursehub-puller", "coursehub-puller-1", "coursehub-puller-2"}
    try:
        wait_until(lambda: all_rolled_out(cluster, ns, first), timeout=120, what="3 puller chunks rolled out")
        cluster.kubectl("wait", "--for=condition=Ready", "courseimage", "--all", "-n", ns, "--timeout=90s")
    except Exception as e:
        raise AssertionError(f"{e}\npullers: {sorted(pullers(cluster, ns))}\n{op.log()[-6000:]}") from None
    live = pullers(cluster, ns)
    held = {name: puller.images_of(ds) for name, ds in live.items()}
    # every course in exactly one chunk, none over the limit, the pods on the nodes
    assert sorted(img for imgs in held.values() for img in imgs) == sorted(refs[s] for s in slugs)
    assert all(len(imgs) <= IMAGES_MAX for imgs in held.values())
    for name, ds in live.items():
        assert ds["status"]["numberReady"] >= 1, name
        pods = get_yaml(cluster, "pods", "-n", ns, "-l", f"coursehub.dev/puller={name}")["items"]
        assert len(pods) == ds["status"]["desiredNumberScheduled"], name
    assert set(prepulled(cluster, ns).values()) == {"True/PrePulled"}
    generation = {name: ds["metadata"]["generation"] for name, ds in live.items()}

    # a sixth course: the partial last chunk takes it; the full ones are not written again
    apply(cluster, ns, course_manifest("chunk-5", "chunk-5", reg.ref(unique_repo, "chunk-5")))
    wait_until(
        lambda: (
            refs["chunk-5"] in puller.images_of(pullers(cluster, ns).get("coursehub-puller-2"))
            and all_rolled_out(cluster, ns, first)
        ),
        timeout=90,
        what="the sixth course in the last chunk, rolled out",
    )
    cluster.kubectl("wait", "--for=condition=Ready", "courseimage", "chunk-5", "-n", ns, "--timeout=60s")
    after = pullers(cluster, ns)
    assert after["coursehub-puller"]["metadata"]["generation"] == generation["coursehub-puller"]
    assert after["coursehub-puller-1"]["metadata"]["generation"] == generation["coursehub-puller-1"]
    assert after["coursehub-puller-2"]["metadata"]["generation"] > generation["coursehub-puller-2"]

    # both courses of the middle chunk go: that DaemonSet goes, the others stay as they are
    middle = {s for s in slugs if refs[s] in held["coursehub-puller-1"]}
    cluster.kubectl("delete", "courseimage", *sorted(middle), "-n", ns, "--wait=true", "--timeout=60s")
    wait_until(
        lambda: set(pullers(cluster, ns)) == {"coursehub-puller", "coursehub-puller-2"},
        timeout=60,
        what="the emptied chunk deleted",
    )
    rest = pullers(cluster, ns)
    assert rest["coursehub-puller"]["metadata"]["generation"] == generation["coursehub-puller"]
    assert (
        rest["coursehub-puller-2"]["metadata"]["generation"]
        == after["coursehub-puller-2"]["metadata"]["generation"]
    )
    assert set(prepulled(cluster, ns).values()) == {"True/PrePulled"}

    # a chunk deleted by hand comes back as it was, without any course change
    cluster.kubectl("delete", "daemonset", "coursehub-puller", "-n", ns)
    wait_until(
        lambda: puller.images_of(pullers(cluster, ns).get("coursehub-puller")) == held["coursehub-puller"],
        timeout=60,
        what="the deleted chunk written again",
    )
