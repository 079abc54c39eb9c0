"""Two replicas, one active; shards by namespace (coursehub.leadership), on the local control plane.

The operators are real processes with the chart's RBAC (identity="chart": a token of the
chart's ServiceAccount, so the Lease rights are the chart's). Counts and states only, never
times: how fast a failover is, bench/bench_failover.py measures.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
import yaml

from coursehub.desired.leader_endpoint import SERVICE_NAME_LABEL, slice_name
from coursehub.leadership import CLAIM_PREFIX, CLAIMS_ANNOTATION, EXIT_LOST_LEASE, SHARD_CONFLICT
from coursehub_dev.samples import course_manifest, hub_manifest
from fixtures.cluster import free_port, wait_until
from fixtures.operator import CHART, CHART_NAMESPACE, CHART_RELEASE

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


def slice_writes(op) -> dict[tuple[str, str], float]:
    """(method, "EndpointSlice") -> count of the operator's EndpointSlice writes."""
    return {k: v for k, v in requests_by(op).items() if k[1] == "EndpointSlice" and k[0] in WRITES}


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


# -- the webhook Service routes to the leader only ---------------------------------------
WEBHOOK_SERVICE = f"{CHART_RELEASE}-coursehub-operator-webhook"  # what the chart names it


def chart_webhook_objects(cluster) -> list[dict]:
    """The chart's webhook Service and its EndpointSlice Role and binding, as `helm install`
    with webhooks on renders them (the operators' own chart RBAC has webhooks off)."""
    args = ["template", CHART_RELEASE, str(CHART), "--namespace", CHART_NAMESPACE]
    args += [
        "--set",
        "watch.allNamespaces=true",
        "--set",
        "webhook.enabled=true",
        "--set",
        "webhook.secretName=x",
    ]
    args += ["--show-only", "templates/rbac.yaml", "--show-only", "templates/webhook-service.yaml"]
    rendered = subprocess.run(
        [cluster.binaries["helm"], *args], capture_output=True, text=True, env=cluster.env(), check=True
    ).stdout
    objs = [d for d in yaml.safe_load_all(rendered) if d]
    return [d for d in objs if d["kind"] == "Service" or d["metadata"]["name"].endswith("-webhook-endpoints")]


def leader_slice(cluster) -> dict | None:
    return get_json(cluster, "endpointslice", slice_name(WEBHOOK_SERVICE), "-n", CHART_NAMESPACE)


def routes_to(obj: dict | None) -> tuple[str, int] | None:
    if not obj or not obj.get("endpoints") or not obj.get("ports"):
        return None
    return obj["endpoints"][0]["addresses"][0], obj["ports"][0]["port"]


def host_address() -> str:
    """An IPv4 address of one of this machine's own interfaces that an EndpointSlice may name
    (the API server refuses loopback and link-local ones). Read from the interfaces (ioctl
    SIOCGIFADDR), nothing sent; a request to it never leaves the machine."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on it
            ip = ipaddress.ip_address(socket.inet_ntoa(packed[20:24]))
            if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
                found.append(str(ip))
    assert found, "this machine has no non-loopback IPv4 address for the webhook EndpointSlice test"
    return found[0]


def webhook_answer(address: str, port: int) -> str:
    """What the webhook server at address:port says to an unsigned push: coursehub's own 401."""
    req = urllib.request.Request(f"http://{address}:{port}/hooks/git", data=b"{}", method="POST")
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        direct.open(req, timeout=5)
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode()}"
    return "not refused"


def test_the_webhook_service_routes_to_the_leader_and_follows_it_after_kill_9_and_a_clean_stop(
    cluster, operator_factory, tmp_path
):
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CHART_NAMESPACE}}),
    )
    objs = chart_webhook_objects(cluster)
    (service,) = [d for d in objs if d["kind"] == "Service"]
    assert service["metadata"]["name"] == WEBHOOK_SERVICE and "selector" not in service["spec"]
    cluster.kubectl("apply", "-n", CHART_NAMESPACE, "-f", "-", input=yaml.safe_dump_all(objs))
    cluster.kubectl(
        "delete", "endpointslice", slice_name(WEBHOOK_SERVICE), "-n", CHART_NAMESPACE, "--ignore-not-found"
    )
    secret = tmp_path / "webhook-secret"
    secret.write_text("s3cret")
    lease = f"le-{uuid.uuid4().hex[:8]}"
    # Two "pods" on one machine share its address (an EndpointSlice may not name loopback
    # ones) and one network namespace: each its own webhook port, so the slice's address and
    # port say which process it routes to.
    ports: dict[str, int] = {}
    for who in ("a", "b", "c"):
        while who not in ports or list(ports.values()).count(ports[who]) > 1:
            ports[who] = free_port()
    addresses = dict.fromkeys(ports, host_address())

    def start(who: str):
        return elected(
            operator_factory,
            ["default"],
            who,
            lease,
            COURSEHUB_WEBHOOK_PORT=str(ports[who]),
            COURSEHUB_WEBHOOK_SECRET_FILE=str(secret),
            COURSEHUB_WEBHOOK_SERVICE=WEBHOOK_SERVICE,
            COURSEHUB_POD_IP=addresses[who],
        )

    def wait_slice_names(who: str, after: str = "") -> None:
        """Until the leader's EndpointSlice routes to `who` (its address and webhook port)."""
        wait_until(
            lambda: routes_to(leader_slice(cluster)) == (addresses[who], ports[who]),
            timeout=60,
            interval=0.1,
            what=f"the slice names {who}{after}",
        )

    def slice_answers_as_coursehub(who: str) -> None:
        """Whoever the slice names answers an unsigned push as coursehub's webhook server (401)."""
        answer = wait_until(
            lambda: webhook_answer(*routes_to(leader_slice(cluster))),
            timeout=60,
            what=f"{who}'s webhook server",
        )
        assert answer.startswith("401 no X-Hub-Signature-256"), answer

    a = start("a")
    wait_until(lambda: holder(cluster, lease) == "a", timeout=60, what="a leads")
    wait_slice_names("a")
    b = start("b")
    wait_until(lambda: b.metric("coursehub_leader") == 0 and requests_by(b), timeout=60, what="b waits")
    # The one slice of the Service (no selector: Kubernetes adds none of its own).
    slices = get_json(
        cluster, "endpointslices", "-n", CHART_NAMESPACE, "-l", f"{SERVICE_NAME_LABEL}={WEBHOOK_SERVICE}"
    )
    assert [s["metadata"]["name"] for s in slices["items"]] == [slice_name(WEBHOOK_SERVICE)]
    # Whoever the slice names answers as coursehub's webhook server.
    slice_answers_as_coursehub("a")

    # Renewals write the Lease and nothing else: the slice is written once.
    renewals = requests_by(a).get(("PUT", "Lease"), 0)
    first = leader_slice(cluster)
    wait_until(
        lambda: requests_by(a).get(("PUT", "Lease"), 0) >= renewals + 3, timeout=60, what="a renews 3 times"
    )
    assert leader_slice(cluster)["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert (writes := slice_writes(a)) == {("POST", "EndpointSlice"): 1}, writes
    # The standby has only read its Lease: it never wrote (or even read) the slice.
    assert set(requests_by(b)) == {("GET", "Lease")}, requests_by(b)

    a.kill(signal.SIGKILL)
    killed = time.monotonic()
    wait_slice_names("b", after=" after a's kill -9")
    stale = time.monotonic() - killed
    assert holder(cluster, lease) == "b" and b.metric("coursehub_leader") == 1
    slice_answers_as_coursehub("b")
    # b took the slice over with one update (the resourceVersion it read), no second create.
    assert (writes := slice_writes(b)) == {("PUT", "EndpointSlice"): 1}, writes
    assert leader_slice(cluster)["metadata"]["annotations"]["coursehub.dev/leader"] == "b"
    # Reported, never asserted (no timing assertions): how long pushes went to the dead leader.
    print(f"\nleader EndpointSlice stale after kill -9: {stale:.2f} s")

    # A clean stop (a rolling update's SIGTERM): b releases the Lease, c takes it and the slice.
    c = start("c")
    wait_until(lambda: c.metric("coursehub_leader") == 0 and requests_by(c), timeout=60, what="c waits")
    assert set(requests_by(c)) == {("GET", "Lease")}, requests_by(c)
    os.killpg(b.proc.pid, signal.SIGTERM)
    stopped = time.monotonic()
    wait_slice_names("c", after=" after b's clean stop")
    handover = time.monotonic() - stopped
    assert b.proc.wait(timeout=30) == 0
    assert holder(cluster, lease) == "c"
    assert (writes := slice_writes(c)) == {("PUT", "EndpointSlice"): 1}, writes
    slice_answers_as_coursehub("c")
    print(f"leader EndpointSlice stale after a clean stop (SIGTERM): {handover:.2f} s")
    cluster.kubectl("delete", "endpointslice", slice_name(WEBHOOK_SERVICE), "-n", CHART_NAMESPACE)
