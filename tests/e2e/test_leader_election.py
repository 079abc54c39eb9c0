"""Two replicas, one active; shards by namespace (coursehub.leadership), on the local control plane.

The operators are real processes with the chart's RBAC (identity="chart": a token of the
chart's ServiceAccount, so the Lease rights are the chart's). Counts and states only, never
times: how fast a failover is, bench/bench_failover.py measures.
"""

from __future__ import annotations

import json
import signal
import uuid

import pytest

from coursehub.leadership import CLAIM_PREFIX, CLAIMS_ANNOTATION, EXIT_LOST_LEASE, SHARD_CONFLICT
from coursehub_dev.samples import course_manifest, hub_manifest
from fixtures.cluster import wait_until
from fixtures.operator import CHART_NAMESPACE

pytestmark = pytest.mark.e2e

WRITES = ("POST", "PUT", "PATCH", "DELETE")


def get_json(cluster, *args: str) -> dict | None:
    res = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


def apply(cluster, ns: str, *objs: dict) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}),
    )


def holder(cluster, lease: str) -> str | None:
    obj = get_json(cluster, "lease", lease, "-n", CHART_NAMESPACE)
    return obj["spec"].get("holderIdentity") if obj else None


def condition(obj: dict | None, type_: str) -> dict:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


def resolved(cluster, ns: str, name: str) -> bool:
    obj = get_json(cluster, "courseimage", name, "-n", ns)
    return condition(obj, "ImageResolved").get("status") == "True"


def requests_by(op) -> dict[tuple[str, str], float]:
    """(method, kind) -> count, from the operator's own coursehub_kube_requests_total."""
    out: dict[tuple[str, str], float] = {}
    for line in op.metrics().splitlines():
        if line.startswith("coursehub_kube_requests_total{"):
            head, _, value = line.rpartition(" ")
            labels = dict(kv.split("=", 1) for kv in head[head.index("{") + 1 : -1].split(","))
            key = (labels["method"].strip('"'), labels["kind"].strip('"'))
            out[key] = out.get(key, 0) + float(value)
    return out


def elected(operator_factory, namespaces: list[str], identity: str, lease: str, **env: str):
    return operator_factory(
        namespaces,
        env={
            "COURSEHUB_LEADER_ELECTION": "true",
            "COURSEHUB_LEASE_NAMESPACE": CHART_NAMESPACE,
            "COURSEHUB_LEASE_NAME": lease,
            "COURSEHUB_IDENTITY": identity,
            **env,
        },
        identity="chart",
    )


def test_standby_takes_over_after_kill_9_and_nothing_is_written_twice(
    cluster, namespace, operator_factory, oci_registry, unique_repo
):
    lease = f"le-{uuid.uuid4().hex[:8]}"
    a = elected(operator_factory, [namespace], "a", lease)
    wait_until(lambda: holder(cluster, lease) == "a", timeout=60, what="a leads")
    b = elected(operator_factory, [namespace], "b", lease)
    wait_until(lambda: b.metric("coursehub_leader") == 0 and requests_by(b), timeout=60, what="b waits")

    reg = oci_registry
    reg.push_image(unique_repo, "one", f"le-one-{unique_repo}")
    reg.push_image(unique_repo, "two", f"le-two-{unique_repo}")
    apply(cluster, namespace, course_manifest("one", "le_one", reg.ref(unique_repo, "one")))
    wait_until(lambda: resolved(cluster, namespace, "one"), timeout=60, what="the leader resolves one")
    assert a.metric("coursehub_leader") == 1
    # The standby has only read its Lease: no watch, no list, no write of anything.
    assert set(requests_by(b)) == {("GET", "Lease")}, requests_by(b)
    before = get_json(cluster, "courseimage", "one", "-n", namespace)

    a.kill(signal.SIGKILL)
    apply(cluster, namespace, course_manifest("two", "le_two", reg.ref(unique_repo, "two")))
    wait_until(lambda: resolved(cluster, namespace, "two"), timeout=60, what="b resolves two after the kill")
    assert holder(cluster, lease) == "b" and b.metric("coursehub_leader") == 1
    # b read course one again (its resolver and status writer start from scratch) and found
    # nothing to change: its status is not written a second time.
    wait_until(
        lambda: b.metric("coursehub_registry_calls_total") >= 2, timeout=60, what="b resolved both courses"
    )
    settled: list[dict] = []

    def quiet() -> bool:
        # Its writes, not counting the Lease it renews every 2 s.
        settled.append({k: v for k, v in requests_by(b).items() if k[0] in WRITES and k[1] != "Lease"})
        return len(settled) >= 4 and all(s == settled[-1] for s in settled[-4:])

    wait_until(quiet, timeout=60, interval=1.0, what="b stops writing")
    after = get_json(cluster, "courseimage", "one", "-n", namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    writes = settled[-1]
    # Course two: its finalizer and its status (at most one write per status step), nothing for one.
    assert writes.get(("PATCH", "CourseImage"), 0) == 1, writes


def test_a_leader_that_loses_its_lease_exits_at_once(cluster, namespace, operator_factory):
    lease = f"le-{uuid.uuid4().hex[:8]}"
    a = elected(operator_factory, [namespace], "a", lease)
    wait_until(lambda: holder(cluster, lease) == "a", timeout=60, what="a leads")
    # Someone else holds it now (as after a long pause of a's process, or a network split).
    obj = get_json(cluster, "lease", lease, "-n", CHART_NAMESPACE)
    obj["spec"]["holderIdentity"] = "intruder"
    cluster.kubectl("replace", "-n", CHART_NAMESPACE, "-f", "-", input=json.dumps(obj))
    wait_until(lambda: a.proc.poll() is not None, timeout=60, what="a exits")
    assert a.proc.returncode == EXIT_LOST_LEASE
    assert "held by intruder" in a.log() and "exiting now" in a.log()
    assert holder(cluster, lease) == "intruder"  # it never wrote the Lease back


def test_two_shards_claiming_one_namespace_neither_serves_it_and_both_say_so(
    cluster, operator_factory, oci_registry, unique_repo
):
    tag = uuid.uuid4().hex[:6]
    only_a, shared = f"sh-a-{tag}", f"sh-ab-{tag}"
    for ns in (only_a, shared):
        cluster.kubectl("create", "namespace", ns)
    try:
        a = elected(operator_factory, [only_a, shared], "a-0", f"shard-a-{tag}", COURSEHUB_SHARD=f"a{tag}")
        b = elected(operator_factory, [shared], "b-0", f"shard-b-{tag}", COURSEHUB_SHARD=f"b{tag}")
        claim = f"{CLAIM_PREFIX}{shared}"

        def contested() -> bool:
            obj = get_json(cluster, "lease", claim, "-n", CHART_NAMESPACE)
            if not obj:
                return False
            claims = json.loads(obj["metadata"].get("annotations", {}).get(CLAIMS_ANNOTATION, "{}"))
            return set(claims) == {f"a{tag}", f"b{tag}"} and not obj["spec"].get("holderIdentity")

        wait_until(contested, timeout=60, what="both shards claim the shared namespace")
        apply(cluster, shared, hub_manifest("learn"))
        msg = f"namespace {shared} is claimed by shards a{tag} and b{tag}"

        def hub_says_conflict() -> bool:
            ready = condition(get_json(cluster, "jhd", "learn", "-n", shared), "Ready")
            return ready.get("reason") == SHARD_CONFLICT

        wait_until(hub_says_conflict, timeout=60, what="the hub says ShardConflict")
        hub = get_json(cluster, "jhd", "learn", "-n", shared)
        ready = condition(hub, "Ready")
        assert ready["status"] == "False" and msg in ready["message"]
        # Nobody served the namespace: no finalizer, no allowlist.
        assert not hub["metadata"].get("finalizers")
        assert get_json(cluster, "configmap", "coursehub-allowlist", "-n", shared) is None
        events = get_json(cluster, "events", "-n", shared, "--field-selector", f"reason={SHARD_CONFLICT}")
        assert events["items"] and all(msg in e["message"] for e in events["items"])
        for op in (a, b):
            assert msg in op.log()
        # The namespace only a claims is served as usual.
        oci_registry.push_image(unique_repo, "solo", f"sh-solo-{unique_repo}")
        apply(cluster, only_a, course_manifest("solo", "sh_solo", oci_registry.ref(unique_repo, "solo")))
        wait_until(lambda: resolved(cluster, only_a, "solo"), timeout=60, what="a serves its own namespace")

        # b goes away (reconfigured without the namespace): once its claim is stale, a serves it.
        b.kill(signal.SIGKILL)
        wait_until(
            lambda: (
                (hub := get_json(cluster, "jhd", "learn", "-n", shared))
                and "coursehub.dev/helm-release" in (hub["metadata"].get("finalizers") or [])
            ),
            timeout=90,
            what="a serves the namespace once b's claim is stale",
        )
        assert holder(cluster, claim) == f"a{tag}"
    finally:
        for ns in (only_a, shared):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
