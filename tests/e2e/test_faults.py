"""Fault tests (issue 8): the operator converges after its own crash, an API server outage, a
registry outage, a failing Helm upgrade, deletions under use, and bulk bad input.

Everything is real: the local control plane, the docker-registry process, helm, and the
operator as a process. Each test waits (generously) for convergence and then asserts the
converged state; nothing asserts how long convergence took.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from coursehub.api.common import COURSE_SLUG_PATTERN
from coursehub.desired.puller import GENERAL, GPU
from coursehub.hub.course_spawner import CourseRefused, parse_allowlist, plan_launch
from coursehub_dev import samples
from coursehub_dev.samples import course_manifest
from fixtures.cluster import wait_until

pytestmark = pytest.mark.e2e

DEFAULT_SLUG = "clustering_and_descriptive_ai"


# -- helpers ---------------------------------------------------------------------------


def hub_manifest(name: str = "learn", **spec) -> dict:
    return samples.hub_manifest(name, **{"courses": {"default": DEFAULT_SLUG}, **spec})


def get_json(cluster, *args: str) -> dict:
    # JSON, not YAML: kubectl -o yaml refuses the control characters generated strings may hold.
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def apply(cluster, ns, *objs, check: bool = True):
    # JSON, not YAML: generated strings (test 7) go through unchanged.
    return cluster.kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}),
        check=check,
    )


def condition(obj: dict, type_: str) -> dict:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return {}


def course_cond(cluster, ns, name, type_) -> dict:
    return condition(get_json(cluster, "courseimage", name, "-n", ns), type_)


def hub_cond(cluster, ns, type_, name="learn") -> dict:
    return condition(get_json(cluster, "jhd", name, "-n", ns), type_)


def courses(cluster, ns) -> dict[str, dict]:
    out = cluster.kubectl("get", "courseimages", "-n", ns, "-o", "json").stdout
    return {o["metadata"]["name"]: o for o in json.loads(out)["items"]}


def allowlist(cluster, ns) -> dict:
    cm = get_json(cluster, "configmap", "coursehub-allowlist", "-n", ns)
    return json.loads(cm["data"]["allowlist.json"])


def puller_containers(cluster, ns, name) -> list[tuple[str, str]]:
    """(init container name, image) pairs of one puller DaemonSet; [] when it does not exist."""
    out = cluster.kubectl("get", "daemonset", name, "-n", ns, "-o", "json", check=False)
    if out.returncode != 0:
        return []
    ds = json.loads(out.stdout)
    # Course images only: the puller's own install-noop and network-tools containers are not courses.
    return [
        (c["name"], c["image"])
        for c in ds["spec"]["template"]["spec"].get("initContainers") or []
        if c["name"].startswith("pull-")
    ]


def helm(cluster, *args, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [cluster.binaries["helm"], *args], capture_output=True, text=True, env=cluster.env(), check=check
    )


def helm_history(cluster, ns, release="learn") -> list[dict]:
    return json.loads(helm(cluster, "history", release, "-n", ns, "-o", "json").stdout)


def all_ready(cluster, ns, names, timeout=180):
    """Wait until every named CourseImage is Ready (kubectl wait would stop at the first missing one)."""
    last: list = []

    def check():
        live = courses(cluster, ns)
        missing = [n for n in names if condition(live.get(n, {}), "Ready").get("status") != "True"]
        # What the stragglers say, for the failure message.
        last[:] = [
            (
                n,
                [
                    (c["type"], c["status"], c["reason"])
                    for c in (live.get(n, {}).get("status") or {}).get("conditions", [])
                ],
            )
            for n in missing[:3]
        ]
        return not missing

    try:
        wait_until(check, timeout=timeout, what=f"{len(names)} courses Ready")
    except AssertionError as e:
        raise AssertionError(f"{e}; not Ready: {last}") from None


def _json_stream(text: str) -> list[dict]:
    """Concatenated JSON documents (kubectl --watch -o json) as a list."""
    dec, out, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        try:
            doc, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return out  # the last one was cut off when the watch was stopped
        out.append(doc)


def our_tracebacks(log: str) -> list[str]:
    """Tracebacks that pass through our package (kopf's own retries log no traceback)."""
    blocks = re.split(r"(?=Traceback \(most recent call last\))", log)
    return [b[:3000] for b in blocks[1:] if "coursehub" in b.split("\n\n")[0]]


@pytest.fixture
def hub_env(cluster, namespace, operator_factory, oci_registry):
    """A namespace with a deployed hub and a running operator; yields (namespace, registry, operator)."""
    op = operator_factory([namespace])
    apply(cluster, namespace, hub_manifest())
    wait_until(
        lambda: hub_cond(cluster, namespace, "ReleaseDeployed").get("status") == "True",
        timeout=180,
        what="hub release deployed",
    )
    return namespace, oci_registry, op


# -- 1. SIGKILL in the middle of a 200-course burst ----------------------------------------


def test_sigkill_mid_burst_converges_without_duplicates_or_helm_upgrade(cluster, hub_env, unique_repo):
    ns, reg, op = hub_env
    n = 200
    gpu_modes = ["none", "required", "optional", "none"]  # both pullers get work
    objs, digests = [], {}
    for i in range(n):
        slug = f"burst_course.{i:03d}"
        digests[slug] = reg.push_image(unique_repo, f"b{i:03d}", f"burst-{unique_repo}-{i}")
        objs.append(
            course_manifest(f"b{i:03d}", slug, reg.ref(unique_repo, f"b{i:03d}"), gpu=gpu_modes[i % 4])
        )
    revisions_before = len(helm_history(cluster, ns))

    apply(cluster, ns, *objs[:120])
    # Kill while the burst is half published: some courses carry status, others not yet.
    wait_until(
        lambda: (
            sum(1 for c in courses(cluster, ns).values() if (c.get("status") or {}).get("resolvedImage"))
            >= 10
        ),
        timeout=60,
        what="the burst is being processed",
    )
    op.kill()
    # Every version of the allowlist from here on, to prove that the restart never unpublished
    # a course that was published before (a half-filled index must not be written out).
    published_before = set(allowlist(cluster, ns)["courses"])
    watch = subprocess.Popen(
        [
            cluster.binaries["kubectl"],
            "get",
            "configmap",
            "coursehub-allowlist",
            "-n",
            ns,
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=cluster.env(),
    )
    # While the operator is down: the rest of the burst arrives, some courses are deleted
    # (they wait on the finalizer) and some are edited.
    apply(cluster, ns, *objs[120:])
    deleted = [f"b{i:03d}" for i in range(0, 40, 4)]
    cluster.kubectl("delete", "courseimage", *deleted, "-n", ns, "--wait=false")
    edited = {f"b{i:03d}": f"Edited {i}" for i in range(1, 40, 4)}
    for name, title in edited.items():
        cluster.kubectl(
            "patch",
            "courseimage",
            name,
            "-n",
            ns,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"displayName": title}}),
        )
    op.start()

    wanted = {f"burst_course.{i:03d}": f"b{i:03d}" for i in range(n) if f"b{i:03d}" not in deleted}
    all_ready(cluster, ns, sorted(wanted.values()), timeout=240)
    wait_until(lambda: not set(deleted) & set(courses(cluster, ns)), timeout=60, what="deleted courses gone")

    live = courses(cluster, ns)
    assert set(live) == set(wanted.values())
    for slug, name in wanted.items():
        st_ = live[name]["status"]
        assert st_["resolvedImage"] == f"{reg.host}/{unique_repo}@{digests[slug]}"
        assert st_["hubs"] == [f"{ns}/learn"]
        assert live[name]["metadata"]["finalizers"].count("coursehub.dev/unpublish") == 1
        assert st_["observedGeneration"] == live[name]["metadata"]["generation"]

    doc = wait_until(
        lambda: (d := allowlist(cluster, ns)) and set(d["courses"]) == set(wanted) and d,
        timeout=60,
        what="allowlist holds exactly the wanted set",
    )
    for slug in wanted:
        assert doc["courses"][slug]["image"] == f"{reg.host}/{unique_repo}@{digests[slug]}"
    for name, title in edited.items():
        slug = live[name]["spec"]["course"]
        if slug in wanted:
            assert doc["courses"][slug]["displayName"] == title

    def expected_pull(modes):
        return sorted(
            f"{reg.host}/{unique_repo}@{digests[s]}"
            for s, name in wanted.items()
            if live[name]["spec"].get("gpu", "none") in modes
        )

    for ds, modes in ((GENERAL, ("none", "optional")), (GPU, ("required", "optional"))):
        pairs = puller_containers(cluster, ns, ds)
        names = [p[0] for p in pairs]
        assert len(names) == len(set(names)), f"{ds} has duplicate init containers"
        assert sorted(p[1] for p in pairs) == expected_pull(modes), f"{ds} holds the wrong images"
    # Only the operator's own objects, once each.
    cms = get_json(cluster, "configmaps", "-n", ns, "-l", "coursehub.dev/hub=learn")["items"]
    assert [c["metadata"]["name"] for c in cms] == ["coursehub-allowlist"]
    dss = get_json(cluster, "daemonsets", "-n", ns, "-l", "coursehub.dev/hub=learn")["items"]
    assert sorted(d["metadata"]["name"] for d in dss) == sorted([GENERAL, GPU])

    watch.terminate()
    versions = _json_stream(watch.communicate()[0])
    deleted_slugs = {f"burst_course.{i:03d}" for i in range(0, 40, 4)}
    for v in versions:
        shown = set(json.loads(v["object"]["data"]["allowlist.json"])["courses"])
        lost = published_before - deleted_slugs - shown
        assert not lost, f"the restart unpublished {len(lost)} courses for a while, e.g. {sorted(lost)[:3]}"

    # The crash and the burst never touched the release.
    assert len(helm_history(cluster, ns)) == revisions_before
    assert op.metric("coursehub_helm_operations_total", operation="upgrade") == 0
    assert op.metric("coursehub_helm_operations_total", operation="install") == 0
    assert hub_cond(cluster, ns, "Ready").get("status") == "True"


# -- 2. kube-apiserver stopped for 20 s ------------------------------------------------------


@pytest.mark.own_control_plane("stops and restarts the local kube-apiserver")
def test_apiserver_outage_operator_reconnects(cluster, hub_env, unique_repo):
    ns, reg, op = hub_env
    d_before = reg.push_image(unique_repo, "before", "before")
    d_after = reg.push_image(unique_repo, "after", "after")
    apply(
        cluster,
        ns,
        course_manifest("before", "before", reg.ref(unique_repo, "before")),
        course_manifest("doomed", "doomed", reg.ref(unique_repo, "before")),
    )
    all_ready(cluster, ns, ["before", "doomed"])

    cluster.stop_process("kube-apiserver")  # SIGTERM, killed if it drains watches too long
    try:
        time.sleep(20)  # the outage itself (etcd keeps the data)
    finally:
        cluster.start_apiserver()

    # Changes made after the restart: the operator must see them without being restarted.
    apply(cluster, ns, course_manifest("after", "after", reg.ref(unique_repo, "after")))
    cluster.kubectl("delete", "courseimage", "doomed", "-n", ns, "--wait=false")
    # The operator's own part: resolved, published, the deleted one released.
    wait_until(
        lambda: set(allowlist(cluster, ns)["courses"]) == {"before", "after"},
        timeout=60,
        what="the allowlist follows changes made after the restart",
    )
    wait_until(
        lambda: course_cond(cluster, ns, "after", "Published").get("status") == "True",
        timeout=60,
        what="the new course reports Published",
    )
    wait_until(lambda: "doomed" not in courses(cluster, ns), timeout=60, what="deleted course released")
    # Ready also needs the puller rolled out, which waits for the controller-manager and kwok
    # to find the API server again (client-go's own backoff): a longer wait.
    all_ready(cluster, ns, ["before", "after"], timeout=240)
    doc = allowlist(cluster, ns)
    assert set(doc["courses"]) == {"before", "after"}
    assert doc["courses"]["after"]["image"].endswith(d_after)
    assert doc["courses"]["before"]["image"].endswith(d_before)
    assert op.proc.poll() is None and op.starts == 1, "the operator must recover by itself, not by a restart"
    assert not our_tracebacks(op.log())


# -- 3. the registry goes down and comes back -------------------------------------------------


def test_registry_outage_keeps_last_good_digest(cluster, namespace, operator_factory, oci_registry_factory):
    reg = oci_registry_factory()
    ns = namespace
    op = operator_factory([ns])
    apply(cluster, ns, hub_manifest())
    good = {s: reg.push_image("courses/nb", s, f"good-{s}") for s in ("alpha", "beta", "gamma")}
    late = reg.push_image("courses/nb", "late", "late-1")  # exists; only the registry is away
    apply(cluster, ns, *(course_manifest(s, s, reg.ref("courses/nb", s)) for s in good))
    all_ready(cluster, ns, list(good))

    reg.stop()
    apply(cluster, ns, course_manifest("late", "late", reg.ref("courses/nb", "late")))
    c = wait_until(
        lambda: (c := course_cond(cluster, ns, "late", "ImageResolved")).get("status") == "False" and c,
        timeout=60,
        what="the new course reports the outage",
    )
    assert c["reason"] == "RegistryUnreachable"
    # Re-resolving the others fails too, yet learners keep their last good digest ...
    wait_until(
        lambda: all(
            course_cond(cluster, ns, s, "ImageResolved").get("reason") == "RegistryUnreachable" for s in good
        ),
        timeout=60,
        what="re-resolution hits the outage",
    )
    # ... also across an operator restart during the outage (the digest lives in status).
    op.kill()
    op.start()
    wait_until(
        lambda: op.metric("coursehub_registry_calls_total", result="RegistryUnreachable") >= 3,
        timeout=60,
        what="the restarted operator tried the registry",
    )
    wait_until(
        lambda: all(course_cond(cluster, ns, s, "Published").get("status") == "True" for s in good),
        timeout=60,
        what="the restarted operator publishes the last good digests",
    )
    doc = allowlist(cluster, ns)
    assert set(doc["courses"]) == set(good)
    pulled = {img for _, img in puller_containers(cluster, ns, GENERAL)}
    for s, digest in good.items():
        assert doc["courses"][s]["image"] == f"{reg.host}/courses/nb@{digest}"
        assert f"{reg.host}/courses/nb@{digest}" in pulled
        ci = get_json(cluster, "courseimage", s, "-n", ns)
        assert ci["status"]["resolvedImage"] == f"{reg.host}/courses/nb@{digest}"
        assert condition(ci, "Published")["status"] == "True"
        assert "last good image" in condition(ci, "ImageResolved")["message"]
    assert course_cond(cluster, ns, "late", "ImageResolved")["status"] == "False"

    reg.start()  # and nobody touches any object
    all_ready(cluster, ns, [*good, "late"], timeout=90)
    doc = allowlist(cluster, ns)
    assert set(doc["courses"]) == {*good, "late"}
    assert doc["courses"]["late"]["image"] == f"{reg.host}/courses/nb@{late}"
    for s, digest in good.items():
        assert doc["courses"][s]["image"] == f"{reg.host}/courses/nb@{digest}"


# -- 4. a Helm upgrade fails -------------------------------------------------------------------


def test_failed_helm_upgrade_keeps_previous_release(cluster, hub_env, unique_repo):
    ns, reg, _op = hub_env
    deployed = helm_history(cluster, ns)[-1]
    assert deployed["status"] == "deployed"
    hub_uid = get_json(cluster, "deployment", "hub", "-n", ns)["metadata"]["uid"]

    # The chart renders, but the API server refuses the hub Deployment it produces.
    bad_values = {
        "proxy": {"service": {"type": "ClusterIP"}},
        "hub": {"resources": {"requests": {"cpu": "-1"}}},  # passes the schema, refused by the API server
    }
    cluster.kubectl(
        "patch", "jhd", "learn", "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"values": bad_values}})
    )
    gen = get_json(cluster, "jhd", "learn", "-n", ns)["metadata"]["generation"]
    c = wait_until(
        lambda: (
            (c := hub_cond(cluster, ns, "ReleaseDeployed")).get("status") == "False"
            and c.get("observedGeneration") == gen
            and c.get("reason") != "Progressing"
            and c
        ),
        timeout=240,
        what="the failed upgrade is reported",
    )
    assert "previous release stays in place" in c["message"]
    assert "cpu" in c["message"], c["message"]
    assert hub_cond(cluster, ns, "Ready")["status"] == "False"
    events = cluster.kubectl(
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        f"involvedObject.name=learn,reason={c['reason']}",
        "-o",
        "json",
    ).stdout
    assert json.loads(events)["items"], "a Warning event says why"

    # The previous release keeps running: a deployed revision without the refused values.
    history = helm_history(cluster, ns)
    assert history[-1]["status"] == "deployed"
    values = json.loads(helm(cluster, "get", "values", "learn", "-n", ns, "-o", "json").stdout)
    assert (values.get("hub") or {}).get("resources") is None, values.get("hub")
    hub_dep = get_json(cluster, "deployment", "hub", "-n", ns)
    assert hub_dep["metadata"]["uid"] == hub_uid and hub_dep["spec"]["replicas"] == 1

    # Course publication does not wait for Helm, and the failure is not retried on every round.
    reg.push_image(unique_repo, "during", "during")
    apply(cluster, ns, course_manifest("during", "during", reg.ref(unique_repo, "during")))
    all_ready(cluster, ns, ["during"])
    assert "during" in allowlist(cluster, ns)["courses"]
    assert len(helm_history(cluster, ns)) == len(history)

    # Fixing the spec recovers the hub.
    cluster.kubectl(
        "patch",
        "jhd",
        "learn",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"values": {"hub": {"resources": None}}}}),
    )
    gen = get_json(cluster, "jhd", "learn", "-n", ns)["metadata"]["generation"]
    wait_until(
        lambda: (
            (c := hub_cond(cluster, ns, "Ready")).get("status") == "True"
            and c.get("observedGeneration") == gen
        ),
        timeout=240,
        what="the hub recovers after the fix",
    )
    assert hub_cond(cluster, ns, "ReleaseDeployed")["status"] == "True"
    assert helm_history(cluster, ns)[-1]["status"] == "deployed"
    assert get_json(cluster, "deployment", "hub", "-n", ns)["spec"]["replicas"] == 1


# -- 5. a CourseImage is deleted while learners use it -------------------------------------------


def learner_pod(name: str, image: str, user: str) -> dict:
    """A pod labelled like KubeSpawner's user pods (what a running notebook server looks like)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "app": "jupyterhub",
                "component": "singleuser-server",
                "hub.jupyter.org/username": user,
            },
            "annotations": {"hub.jupyter.org/username": user},
        },
        "spec": {
            "containers": [{"name": "notebook", "image": image}],
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def test_course_deleted_while_in_use(cluster, hub_env, unique_repo):
    ns, reg, _op = hub_env
    reg.push_image(unique_repo, "default", "default")
    reg.push_image(unique_repo, "retiring", "retiring")
    apply(
        cluster,
        ns,
        course_manifest("default", DEFAULT_SLUG, reg.ref(unique_repo, "default")),
        course_manifest("retiring", "Retiring_Course.1", reg.ref(unique_repo, "retiring")),
    )
    all_ready(cluster, ns, ["default", "retiring"])
    image = allowlist(cluster, ns)["courses"]["retiring_course.1"]["image"]
    default_image = allowlist(cluster, ns)["courses"][DEFAULT_SLUG]["image"]
    assert image in {img for _, img in puller_containers(cluster, ns, GENERAL)}

    apply(cluster, ns, learner_pod("jupyter-learner-1", image, "learner-1"))
    pod = wait_until(
        lambda: (
            (p := get_json(cluster, "pod", "jupyter-learner-1", "-n", ns)).get("status", {}).get("phase")
            == "Running"
            and p
        ),
        timeout=60,
        what="learner pod running",
    )

    cluster.kubectl("delete", "courseimage", "retiring", "-n", ns, "--timeout=90s")
    # The finalizer held the object until both the allowlist and the puller had dropped it.
    doc = allowlist(cluster, ns)
    assert "retiring_course.1" not in doc["courses"]
    assert image not in {img for _, img in puller_containers(cluster, ns, GENERAL)}
    assert image not in {img for _, img in puller_containers(cluster, ns, GPU)}

    # New spawns of the course, decided by the hub's own code from the live allowlist.
    plan = plan_launch(parse_allowlist(json.dumps(doc)), {"course": "Retiring_Course.1"})
    assert plan.image == default_image and "not offered" in plan.notes[0]
    cluster.kubectl(
        "patch",
        "jhd",
        "learn",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"courses": {"default": DEFAULT_SLUG, "onUnknown": "reject"}}}),
    )
    doc = wait_until(
        lambda: (d := allowlist(cluster, ns))["onUnknown"] == "reject" and d,
        timeout=60,
        what="the hub's policy reaches the allowlist",
    )
    with pytest.raises(CourseRefused) as refused:
        plan_launch(parse_allowlist(json.dumps(doc)), {"course": "retiring_course.1"})
    assert refused.value.status == 400

    # The learner's server is untouched.
    now = get_json(cluster, "pod", "jupyter-learner-1", "-n", ns)
    assert now["metadata"]["uid"] == pod["metadata"]["uid"]
    assert not now["metadata"].get("deletionTimestamp")
    assert now["status"]["phase"] == "Running"
    assert now["spec"]["containers"][0]["image"] == image


# -- 6. a JupyterHubDeployment is deleted with 50 courses attached ---------------------------------

KINDS = (
    "configmaps,secrets,serviceaccounts,services,deployments,replicasets,daemonsets,pods,roles,rolebindings"
)


# What the control plane itself puts into every namespace (possibly after our first look).
NAMESPACE_DEFAULTS = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}


def namespace_objects(cluster, ns) -> set[tuple[str, str]]:
    out = json.loads(cluster.kubectl("get", KINDS, "-n", ns, "-o", "json").stdout)
    return {(o["kind"], o["metadata"]["name"]) for o in out["items"]} - NAMESPACE_DEFAULTS


def test_hub_deleted_with_50_courses(cluster, namespace, operator_factory, oci_registry, unique_repo):
    ns, reg = namespace, oci_registry
    baseline = namespace_objects(cluster, ns)  # what the namespace holds without us
    op = operator_factory([ns])
    apply(cluster, ns, hub_manifest())
    names = [f"c{i:02d}" for i in range(50)]
    for i, name in enumerate(names):
        reg.push_image(unique_repo, name, f"fifty-{unique_repo}-{i}")
    apply(
        cluster,
        ns,
        *(
            course_manifest(
                name, f"course_{name}", reg.ref(unique_repo, name), gpu="required" if i % 3 == 0 else "none"
            )
            for i, name in enumerate(names)
        ),
    )
    all_ready(cluster, ns, names)
    wait_until(lambda: hub_cond(cluster, ns, "Ready").get("status") == "True", timeout=180, what="hub Ready")
    assert namespace_objects(cluster, ns) - baseline  # the operator and helm created things

    cluster.kubectl("delete", "jhd", "learn", "-n", ns, "--timeout=180s")  # no finalizer may hang
    assert "learn" not in cluster.kubectl("get", "jhd", "-n", ns, "-o", "name").stdout

    # Everything the operator (and its Helm release) created goes away.
    wait_until(
        lambda: namespace_objects(cluster, ns) <= baseline, timeout=120, what="the hub's objects are removed"
    )
    assert not json.loads(helm(cluster, "list", "-n", ns, "-a", "-o", "json").stdout)
    assert helm(cluster, "status", "learn", "-n", ns, check=False).returncode != 0

    # The courses stay, and say they are no longer published anywhere.
    def unpublished():
        live = courses(cluster, ns)
        return len(live) == 50 and all(
            condition(c, "Published").get("reason") == "NoHub"
            and condition(c, "Published").get("status") == "False"
            and condition(c, "Ready").get("status") == "False"
            and not c["status"].get("hubs")
            and not c["status"].get("launchURL")
            for c in live.values()
        )

    wait_until(unpublished, timeout=60, what="courses report NoHub")
    # Without a hub, deleting courses does not hang on their finalizer either.
    cluster.kubectl("delete", "courseimages", "--all", "-n", ns, "--timeout=90s")
    assert not courses(cluster, ns)
    assert op.proc.poll() is None and not our_tracebacks(op.log())


# -- 7. bad input in bulk ----------------------------------------------------------------------------

# Each mutation turns a valid CourseImage into one the API server must refuse; the second
# item is a word the refusal message must contain (the field it names).
MUTATIONS = {
    "slug-bad-char": (lambda m: m["spec"].__setitem__("course", m["spec"]["course"] + "/x"), "spec.course"),
    "slug-too-long": (lambda m: m["spec"].__setitem__("course", "a" * 64), "spec.course"),
    "slug-not-string": (lambda m: m["spec"].__setitem__("course", 42), "spec.course"),
    "no-image": (lambda m: m["spec"].pop("image"), "spec.image"),
    "image-uppercase-repo": (
        lambda m: m["spec"].__setitem__("image", "127.0.0.1:5000/Courses/NB:x"),
        "spec.image",
    ),
    "image-no-tag": (lambda m: m["spec"].__setitem__("image", "127.0.0.1:5000/courses/nb"), "spec.image"),
    "gpu-unknown": (lambda m: m["spec"].__setitem__("gpu", "maybe"), "spec.gpu"),
    "notebook-dotdot": (
        lambda m: m["spec"].__setitem__("defaultNotebook", "a/../../etc.ipynb"),
        "spec.defaultNotebook",
    ),
    "notebook-not-ipynb": (
        lambda m: m["spec"].__setitem__("defaultNotebook", "intro.py"),
        "spec.defaultNotebook",
    ),
    "retention-zero": (lambda m: m["spec"].__setitem__("retention", {"keep": 0}), "spec.retention.keep"),
    "memory-bad": (
        lambda m: m["spec"].__setitem__("resources", {"memory": {"limit": "lots"}}),
        "spec.resources.memory.limit",
    ),
    "unknown-field": (lambda m: m["spec"].__setitem__("tag", "latest"), "tag"),
    "prepull-not-bool": (lambda m: m["spec"].__setitem__("prePull", "sometimes"), "spec.prePull"),
    "no-spec": (lambda m: m.pop("spec"), "spec"),
    "bad-name": (
        lambda m: m["metadata"].__setitem__("name", m["metadata"]["name"].upper() + "_X"),
        "metadata.name",
    ),
}
# Accepted by the API server, but no digest can be had: reported, never published.
UNRESOLVABLE = ("missing-tag", "unreachable-registry")


def _slug_body():
    return st.from_regex(COURSE_SLUG_PATTERN, fullmatch=True).map(lambda s: s[:50])


KIND_MIX = ["valid"] * 16 + sorted(MUTATIONS) + [*UNRESOLVABLE]


@st.composite
def course_template(draw):
    """(kind, slug stem, spec without course) of one generated CourseImage; `finish` names it."""
    kind = draw(st.sampled_from(KIND_MIX))
    spec: dict = {"tag": draw(st.integers(0, 7))}
    if draw(st.booleans()):
        spec["displayName"] = draw(st.text(max_size=128))
    spec["gpu"] = draw(st.sampled_from(["none", "required", "optional"]))
    if draw(st.booleans()):
        spec["defaultNotebook"] = draw(
            st.from_regex(r"[a-z0-9_]{1,12}(/[A-Za-z0-9 _-]{1,12}){0,3}\.ipynb", fullmatch=True)
        )
    if draw(st.booleans()):
        spec["prePull"] = draw(st.booleans())
    if draw(st.booleans()):
        spec["resources"] = {"memory": {"limit": draw(st.from_regex(r"[1-9][0-9]{0,2}[MG]", fullmatch=True))}}
    if draw(st.booleans()):
        spec["retention"] = {"keep": draw(st.integers(1, 1000))}
    stem = draw(st.from_regex(COURSE_SLUG_PATTERN, fullmatch=True))[:50]
    return kind, stem, spec


def finish(i: int, template, tags: list[str]) -> tuple[dict, str, str | None]:
    """(manifest, kind, word the refusal must contain) with a unique name and slug."""
    kind, stem, spec = template
    spec = dict(spec)
    image = tags[spec.pop("tag")]
    if kind in UNRESOLVABLE:
        image = {
            "missing-tag": image.rsplit(":", 1)[0] + ":no-such-tag",
            "unreachable-registry": "127.0.0.1:1/courses/nb:x",
        }[kind]
    manifest = {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": "CourseImage",
        "metadata": {"name": f"g{i:03d}"},
        "spec": {"course": f"{stem}-{i:03d}", "image": image, **spec},
    }
    if kind in MUTATIONS:
        mutate, word = MUTATIONS[kind]
        mutate(manifest)
        return manifest, kind, word
    return manifest, kind, None


def generate_manifests(n: int, tags: list[str]) -> list[tuple[dict, str, str | None]]:
    """n manifests from hypothesis's generator (the e2e part runs outside it: no shrinking)."""
    templates: list = []

    @settings(
        max_examples=n,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(course_template())
    def draw(template):
        templates.append(template)

    while len(templates) < n:
        draw()
    return [finish(i, t, tags) for i, t in enumerate(templates[:n])]


def test_bad_input_in_bulk(cluster, hub_env, unique_repo, tmp_path):
    ns, reg, op = hub_env
    tags = []
    for t in range(8):
        reg.push_image(unique_repo, f"t{t}", f"bulk-{unique_repo}-{t}")
        tags.append(reg.ref(unique_repo, f"t{t}"))
    items = generate_manifests(200, tags)
    (tmp_path / "manifests.json").write_text(json.dumps(items, indent=1))  # for a failure's post-mortem
    kinds = [k for _, k, _ in items]
    assert kinds.count("valid") >= 20 and len(set(kinds) & set(MUTATIONS)) >= 5, (
        "the generator mixes its input"
    )

    # Every manifest is sent on its own, straight to the API server (kubectl apply would refuse
    # some on the client side), with strict field validation as kubectl apply asks for it.
    path = f"/apis/coursehub.dev/v1alpha1/namespaces/{ns}/courseimages?fieldValidation=Strict"
    for manifest, kind, word in items:
        out = cluster.kubectl("create", "--raw", path, "-f", "-", input=json.dumps(manifest), check=False)
        name = manifest["metadata"]["name"]
        if kind in MUTATIONS:
            assert out.returncode != 0, f"{kind}: the API server accepted {json.dumps(manifest)}"
            assert word in out.stderr, f"{kind}: the refusal does not name {word}: {out.stderr}"
        else:
            assert out.returncode == 0, f"{kind} {name} refused: {out.stderr}"

    valid = [m["metadata"]["name"] for m, k, _ in items if k == "valid"]
    unresolvable = {m["metadata"]["name"]: k for m, k, _ in items if k in UNRESOLVABLE}
    live = courses(cluster, ns)
    assert set(live) == set(valid) | set(unresolvable), "exactly the accepted manifests exist"

    all_ready(cluster, ns, valid, timeout=180)
    for name, kind in unresolvable.items():
        reason = {"missing-tag": "ImageNotFound", "unreachable-registry": "RegistryUnreachable"}[kind]
        wait_until(
            lambda name=name, reason=reason: (
                course_cond(cluster, ns, name, "ImageResolved").get("reason") == reason
            ),
            timeout=60,
            what=f"{name} reports {reason}",
        )
        assert course_cond(cluster, ns, name, "Ready")["status"] == "False"

    slugs = {m["spec"]["course"].lower() for m, k, _ in items if k == "valid"}
    wait_until(
        lambda: set(allowlist(cluster, ns)["courses"]) == slugs,
        timeout=60,
        what="allowlist holds exactly the valid courses",
    )
    assert op.proc.poll() is None and op.starts == 1, "the operator never crashed"
    assert not our_tracebacks(op.log()), our_tracebacks(op.log())[0]
    assert hub_cond(cluster, ns, "Ready")["status"] == "True"
