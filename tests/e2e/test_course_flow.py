"""CourseImage end to end: a real operator process, control plane, registry and helm.

Resolve -> publish -> pre-pull, tag moves, unknown tags, outages, duplicates, deletes and
32 realistic slugs, with the hub's Helm release never upgraded by course changes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from coursehub_dev import samples
from coursehub_dev.samples import course_manifest
from fixtures.cluster import get_yaml, wait_until
from fixtures.slugs import GPU_SLUGS, SLUGS_32

pytestmark = pytest.mark.e2e


def hub_manifest(name: str = "learn", **spec) -> dict:
    return samples.hub_manifest(name, **{"courses": {"default": "clustering_and_descriptive_ai"}, **spec})


def apply(cluster, ns, *objs):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(objs))


def allowlist(cluster, ns) -> dict:
    cm = get_yaml(cluster, "configmap", "coursehub-allowlist", "-n", ns)
    return json.loads(cm["data"]["allowlist.json"])


def condition(obj: dict, type_: str) -> dict:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return {}


def course_cond(cluster, ns, name, type_):
    return condition(get_yaml(cluster, "courseimage", name, "-n", ns), type_)


def puller_images(cluster, ns, name="coursehub-puller") -> dict[str, str]:
    ds = get_yaml(cluster, "daemonset", name, "-n", ns)
    # Course images only: the puller's own install-noop and network-tools containers are not courses.
    return {
        c["name"]: c["image"]
        for c in ds["spec"]["template"]["spec"]["initContainers"]
        if c["name"].startswith("pull-")
    }


def helm_revision(cluster, ns, release="learn") -> int:
    out = subprocess.run(
        [cluster.binaries["helm"], "status", release, "-n", ns, "-o", "json"],
        capture_output=True,
        text=True,
        env=cluster.env(),
        check=True,
    ).stdout
    return json.loads(out)["version"]


@pytest.fixture
def hub_env(cluster, namespace, operator_factory, oci_registry):
    """A namespace with a hub and a running operator; yields (namespace, registry, operator)."""
    op = operator_factory([namespace])
    apply(cluster, namespace, hub_manifest())
    wait_until(
        lambda: (
            condition(get_yaml(cluster, "jhd", "learn", "-n", namespace), "ReleaseDeployed").get("status")
            == "True"
        ),
        timeout=120,
        what="hub release deployed",
    )
    return namespace, oci_registry, op


def test_resolve_publish_prepull_and_follow_tag(cluster, hub_env, unique_repo):
    ns, reg, _op = hub_env
    d1 = reg.push_image(unique_repo, "uai_source-uai.1", "build-1")
    d2 = reg.push_image(unique_repo, "stats-101", "stats-1")
    apply(
        cluster,
        ns,
        course_manifest(
            "uai-1",
            "uai_source-uai.1",
            reg.ref(unique_repo, "uai_source-uai.1"),
            gpu="required",
            defaultNotebook="intro.ipynb",
            resources={"memory": {"limit": "8G"}},
        ),
        course_manifest("stats", "Stats-101", reg.ref(unique_repo, "stats-101")),
    )
    cluster.kubectl("wait", "--for=condition=Ready", "courseimage", "--all", "-n", ns, "--timeout=90s")

    doc = allowlist(cluster, ns)
    assert doc["courses"]["uai_source-uai.1"]["image"] == f"{reg.host}/{unique_repo}@{d1}"
    assert doc["courses"]["stats-101"]["image"] == f"{reg.host}/{unique_repo}@{d2}"
    assert doc["courses"]["stats-101"]["course"] == "Stats-101"
    assert doc["courses"]["uai_source-uai.1"]["resources"]["memory"]["limit"] == "8G"
    assert doc["courses"]["uai_source-uai.1"]["gpu"] == "required"

    ci = get_yaml(cluster, "courseimage", "uai-1", "-n", ns)
    assert ci["status"]["resolvedImage"] == f"{reg.host}/{unique_repo}@{d1}"
    assert ci["status"]["launchURL"] == "https://nb.learn.example.edu/hub/tmplogin?course=uai_source-uai.1"
    assert ci["status"]["hubs"] == [f"{ns}/learn"]
    assert ci["status"]["observedGeneration"] == ci["metadata"]["generation"]

    # GPU course only in the GPU puller, which runs only on the GPU node.
    assert f"{reg.host}/{unique_repo}@{d1}" in puller_images(cluster, ns, "coursehub-puller-gpu").values()
    assert f"{reg.host}/{unique_repo}@{d1}" not in puller_images(cluster, ns).values()
    pods = get_yaml(cluster, "pods", "-n", ns, "-l", "coursehub.dev/puller=coursehub-puller-gpu")["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["kwok-gpu-0"]
    pods = get_yaml(cluster, "pods", "-n", ns, "-l", "coursehub.dev/puller=coursehub-puller")["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["kwok-node-0", "kwok-node-1"]

    # A new build under the same tag: the digest follows without any touch.
    d1b = reg.push_image(unique_repo, "uai_source-uai.1", "build-2")
    assert d1b != d1
    wait_until(
        lambda: allowlist(cluster, ns)["courses"]["uai_source-uai.1"]["image"].endswith(d1b),
        timeout=60,
        what="digest follows the moved tag",
    )
    wait_until(
        lambda: (
            f"{reg.host}/{unique_repo}@{d1b}" in puller_images(cluster, ns, "coursehub-puller-gpu").values()
        ),
        timeout=30,
        what="puller re-pulls the new digest",
    )
    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", "reason=DigestChanged").stdout
    assert "uai-1" in events

    # Course changes never upgrade the hub's release.
    assert helm_revision(cluster, ns) == 1


def test_unknown_tag_and_registry_outage(cluster, namespace, operator_factory, oci_registry_factory):
    reg = oci_registry_factory()
    ns = namespace
    operator_factory([ns])
    apply(cluster, ns, hub_manifest())
    good = reg.push_image("courses/nb", "good", "g1")
    apply(
        cluster,
        ns,
        course_manifest("good", "good", reg.ref("courses/nb", "good")),
        course_manifest("missing", "missing", reg.ref("courses/nb", "no-such-tag")),
    )
    cluster.kubectl("wait", "--for=condition=Ready", "courseimage/good", "-n", ns, "--timeout=90s")
    c = wait_until(
        lambda: (
            course_cond(cluster, ns, "missing", "ImageResolved").get("status") == "False"
            and course_cond(cluster, ns, "missing", "ImageResolved")
        ),
        what="missing tag reported",
    )
    assert c["reason"] == "ImageNotFound"
    assert "no-such-tag" in c["message"]

    reg.stop()
    apply(cluster, ns, course_manifest("late", "late", reg.ref("courses/nb", "late")))
    c = wait_until(
        lambda: (
            course_cond(cluster, ns, "late", "ImageResolved").get("reason") == "RegistryUnreachable"
            and course_cond(cluster, ns, "late", "ImageResolved")
        ),
        what="outage reported",
        timeout=60,
    )
    assert c["status"] == "False"
    # The course that resolved before keeps its last good digest published.
    wait_until(
        lambda: course_cond(cluster, ns, "good", "ImageResolved").get("reason") == "RegistryUnreachable",
        what="re-resolve hits the outage",
        timeout=30,
    )
    assert allowlist(cluster, ns)["courses"]["good"]["image"].endswith(good)

    reg.start()
    reg.push_image("courses/nb", "late", "l1")
    cluster.kubectl(
        "wait", "--for=condition=Ready", "courseimage/late", "courseimage/good", "-n", ns, "--timeout=90s"
    )
    assert set(allowlist(cluster, ns)["courses"]) == {"good", "late"}


def test_duplicate_slug_and_delete(cluster, hub_env, unique_repo):
    ns, reg, _op = hub_env
    reg.push_image(unique_repo, "a", "a1")
    apply(cluster, ns, course_manifest("first", "nlp_2025", reg.ref(unique_repo, "a")))
    cluster.kubectl("wait", "--for=condition=Ready", "courseimage/first", "-n", ns, "--timeout=90s")
    apply(cluster, ns, course_manifest("second", "NLP_2025", reg.ref(unique_repo, "a")))
    c = wait_until(
        lambda: (
            course_cond(cluster, ns, "second", "Published").get("reason") == "DuplicateCourse"
            and course_cond(cluster, ns, "second", "Published")
        ),
        what="duplicate reported",
    )
    assert "first" in c["message"] and c["status"] == "False"

    cluster.kubectl("delete", "courseimage", "first", "-n", ns, "--timeout=60s")
    assert "nlp_2025" in allowlist(cluster, ns)["courses"]  # the second one takes the slug over
    wait_until(
        lambda: course_cond(cluster, ns, "second", "Published").get("status") == "True",
        what="second publishes once the first is gone",
    )
    cluster.kubectl("delete", "courseimage", "second", "-n", ns, "--timeout=60s")
    assert "nlp_2025" not in allowlist(cluster, ns)["courses"]
    assert not get_yaml(cluster, "daemonset", "-n", ns, "-l", "coursehub.dev/hub=learn")["items"]


def test_32_realistic_slugs(cluster, hub_env, unique_repo):
    ns, reg, _op = hub_env
    objs = []
    for i, slug in enumerate(SLUGS_32):
        reg.push_image(unique_repo, slug, f"seed-{slug}")
        objs.append(
            course_manifest(
                f"c{i:02d}", slug, reg.ref(unique_repo, slug), gpu="required" if slug in GPU_SLUGS else "none"
            )
        )
    apply(cluster, ns, *objs)
    cluster.kubectl("wait", "--for=condition=Ready", "courseimage", "--all", "-n", ns, "--timeout=120s")
    doc = allowlist(cluster, ns)
    assert sorted(doc["courses"]) == sorted(s.lower() for s in SLUGS_32)
    general = puller_images(cluster, ns)
    gpu = puller_images(cluster, ns, "coursehub-puller-gpu")
    assert len(general) == 16 and len(gpu) == 16  # names that collide after naive sanitising stay apart
    assert helm_revision(cluster, ns) == 1


def test_spec_and_labels_untouched_by_reconciliation(cluster, hub_env, unique_repo):
    """Argo CD self-heal never fights the operator: it writes status and its finalizer only."""
    ns, reg, _op = hub_env
    reg.push_image(unique_repo, "argo", "argo")
    obj = course_manifest("argo", "argo", reg.ref(unique_repo, "argo"), displayName="Argo course")
    obj["metadata"]["labels"] = {"app.kubernetes.io/instance": "courses", "team": "ai"}
    obj["metadata"]["annotations"] = {
        "argocd.argoproj.io/tracking-id": "courses:coursehub.dev/CourseImage:x/argo"
    }
    apply(cluster, ns, obj)
    cluster.kubectl("wait", "--for=condition=Ready", "courseimage/argo", "-n", ns, "--timeout=90s")
    live = get_yaml(cluster, "courseimage", "argo", "-n", ns, "--show-managed-fields")
    assert live["spec"] == obj["spec"]
    assert live["metadata"]["labels"] == obj["metadata"]["labels"]
    assert (
        live["metadata"]["annotations"]["argocd.argoproj.io/tracking-id"]
        == obj["metadata"]["annotations"]["argocd.argoproj.io/tracking-id"]
    )
    managers = {
        (m["manager"], m.get("subresource", ""))
        for m in live["metadata"]["managedFields"]
        if m["manager"] == "coursehub"
    }
    for m in live["metadata"]["managedFields"]:
        if m["manager"] == "coursehub" and not m.get("subresource"):
            assert set(m["fieldsV1"]) == {"f:metadata"}
            assert set(m["fieldsV1"]["f:metadata"]) == {"f:finalizers"}
    assert ("coursehub", "status") in managers


def test_argocd_health_of_live_objects(cluster, hub_env, unique_repo):
    """The Argo CD Lua health checks read the operator's real statuses the intended way.

    With COURSEHUB_CAPTURE_STATUS=<dir> the live objects are written there as fixtures for
    tests/unit/test_argocd_health.py (that is how tests/fixtures/status/*-live-*.yaml were made).
    """
    import os

    from unit.test_argocd_health import health

    ns, reg, _op = hub_env
    reg.push_image(unique_repo, "ok", "ok")
    apply(
        cluster,
        ns,
        course_manifest("ok", "ok", reg.ref(unique_repo, "ok")),
        course_manifest("missing", "missing", reg.ref(unique_repo, "missing")),
    )
    cluster.kubectl("wait", "--for=condition=Ready", "courseimage/ok", "jhd/learn", "-n", ns, "--timeout=90s")
    wait_until(
        lambda: course_cond(cluster, ns, "missing", "ImageResolved").get("reason") == "ImageNotFound",
        what="missing tag reported",
    )
    cases = {
        "courseimage-live-ready": (get_yaml(cluster, "courseimage", "ok", "-n", ns), "Healthy"),
        "courseimage-live-image-not-found": (
            get_yaml(cluster, "courseimage", "missing", "-n", ns),
            "Degraded",
        ),
        "jupyterhubdeployment-live-ready": (get_yaml(cluster, "jhd", "learn", "-n", ns), "Healthy"),
    }
    capture = os.environ.get("COURSEHUB_CAPTURE_STATUS")
    for name, (obj, want) in cases.items():
        got = health(obj["kind"], obj)
        assert got["status"] == want, (name, got)
        if capture:
            for k in ("managedFields", "uid", "resourceVersion"):
                obj["metadata"].pop(k, None)
            Path(capture, f"{name}.yaml").write_text(
                yaml.safe_dump({"expect": {"status": want}, "object": obj})
            )


def test_metrics_tell_the_truth(cluster, hub_env, unique_repo):
    ns, reg, op = hub_env
    for slug in ("m1", "m2", "m3"):
        reg.push_image(unique_repo, slug, slug)
    apply(cluster, ns, *[course_manifest(s, s, reg.ref(unique_repo, s)) for s in ("m1", "m2", "m3")])
    cluster.kubectl("wait", "--for=condition=Ready", "courseimage", "--all", "-n", ns, "--timeout=90s")
    wait_until(
        lambda: op.metric("coursehub_hub_courses", namespace=ns, hub="learn") == 3, what="courses gauge"
    )
    assert op.metric("coursehub_registry_calls_total", registry="oci", result="ok") >= 3
    assert op.metric("coursehub_helm_operations_total", operation="install", result="ok") == 1
    assert op.metric("coursehub_reconciles_total", kind="JupyterHubDeployment", result="ok") >= 1
    assert op.metric("coursehub_reconcile_duration_seconds_count", kind="CourseImage") >= 3
    wait_until(
        lambda: op.metric("coursehub_prepull_ready", namespace=ns, hub="learn") == 1, what="prepull gauge"
    )
    assert op.metric("coursehub_kube_requests_total", method="PATCH", kind="ConfigMap") >= 1


@pytest.mark.own_control_plane("stops and restarts the dev cluster's kwok")
def test_publish_after_pull_offers_a_digest_only_once_every_node_has_it(
    cluster, namespace, operator_factory, oci_registry, unique_repo
):
    """With kwok stopped no puller pod becomes Ready, so nothing counts as pulled: the new
    digest waits and learners keep the previous one; once the nodes pull, it is offered."""
    ns = namespace
    operator_factory([ns])
    apply(cluster, ns, hub_manifest(prePull={"enabled": True, "publishAfterPull": True}))
    d1 = oci_registry.push_image(unique_repo, "pap", "v1")
    apply(cluster, ns, course_manifest("pap", "pap", oci_registry.ref(unique_repo, "pap")))
    cluster.kubectl("wait", "--for=condition=Ready", "courseimage/pap", "-n", ns, "--timeout=90s")
    assert allowlist(cluster, ns)["courses"]["pap"]["image"].endswith(d1)

    cluster.stop_process("kwok")
    try:
        d2 = oci_registry.push_image(unique_repo, "pap", "v2")
        wait_until(
            lambda: f"{oci_registry.host}/{unique_repo}@{d2}" in puller_images(cluster, ns).values(),
            timeout=60,
            what="puller asked to pull the new digest",
        )
        wait_until(
            lambda: course_cond(cluster, ns, "pap", "PrePulled").get("status") == "False",
            timeout=30,
            what="PrePulled False while nodes pull",
        )
        assert allowlist(cluster, ns)["courses"]["pap"]["image"].endswith(d1)  # the old digest stays offered
    finally:
        cluster.start_kwok()
    wait_until(
        lambda: allowlist(cluster, ns)["courses"]["pap"]["image"].endswith(d2),
        timeout=90,
        what="new digest offered once pulled",
    )
    cluster.kubectl("wait", "--for=condition=Ready", "courseimage/pap", "-n", ns, "--timeout=90s")
