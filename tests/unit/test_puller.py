"""The rendered pre-puller (issue 12 item 2, item 8's puller sentences): nothing from a course
image runs, every container is locked down, a NetworkPolicy cuts all traffic, pods go only
where learner pods go, and pull secrets come only from the hub's namespace."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coursehub.api.courseimage import CourseImageSpec
from coursehub.api.jupyterhubdeployment import JupyterHubDeploymentSpec
from coursehub.desired import puller
from coursehub.desired.courses import CourseRecord, HubRecord
from fixtures.slugs import GPU_SLUGS, SLUGS_32

REPO = Path(__file__).resolve().parents[2]
GPU_NODES = {
    "gpuNodes": {"label": "ol.mit.edu/gpu_node=true", "toleration": "ol.mit.edu/gpu_node=true:NoSchedule"}
}
GPU_TOLERATION = {"key": "ol.mit.edu/gpu_node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
OPERATOR_IMAGE = "registry.example.edu/coursehub-operator@sha256:" + "b" * 64
USER_TOLERATIONS = [
    {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
    {"key": "hub.jupyter.org_dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
]


def hub(ns: str = "jupyter", **spec) -> HubRecord:
    base = {
        "chart": {"path": "/charts/jupyterhub"},
        "domain": "nb.example.edu",
        "database": {"type": "sqlite-memory"},
        "auth": {"mode": "tmp", "allowUngated": True},
        "singleuser": GPU_NODES,
    }
    base.update(spec)
    return HubRecord(
        ns, "learn", "uid-h", "2026-01-01T00:00:00Z", 1, JupyterHubDeploymentSpec.model_validate(base)
    )


def course(slug: str, *, ns: str = "jupyter", gpu: str = "none", secret: str | None = None) -> CourseRecord:
    raw: dict = {"course": slug, "image": f"r.example.edu/nb:{slug}", "gpu": gpu}
    if secret:
        raw["imagePullSecretRef"] = {"name": secret}
    digest = f"{abs(hash((ns, slug))) % 10**10:064d}"
    return CourseRecord(
        ns,
        slug.lower(),
        f"uid-{slug}",
        "2026-01-01T00:00:00Z",
        1,
        (),
        CourseImageSpec.model_validate(raw),
        f"r.example.edu/nb@sha256:{digest}",
    )


def winners(*courses: CourseRecord) -> dict[str, CourseRecord]:
    return {c.slug: c for c in courses}


def both(h: HubRecord | None = None, **kw) -> dict[str, dict]:
    """Both pullers of a hub with one CPU, one GPU and one optional-GPU course."""
    out = puller.desired_pullers(
        h or hub(),
        winners(course("cpu-1"), course("gpu-1", gpu="required"), course("opt-1", gpu="optional")),
        operator_image=OPERATOR_IMAGE,
        **kw,
    )
    assert out[puller.GENERAL] and out[puller.GPU]
    return out  # type: ignore[return-value]


def pod(ds: dict) -> dict:
    return ds["spec"]["template"]["spec"]


def containers(ds: dict) -> list[dict]:
    return pod(ds)["initContainers"] + pod(ds)["containers"]


def quantity(q: str) -> float:
    """cpu in cores, memory in bytes (enough of the Kubernetes grammar for these manifests)."""
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi)?", str(q))
    assert m, q
    n, unit = float(m.group(1)), m.group(2)
    return n * {None: 1, "m": 0.001, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}[unit]


# --- every container locked down -------------------------------------------------------


@pytest.mark.parametrize("name", [puller.GENERAL, puller.GPU])
def test_every_container_runs_as_nobody_without_privileges(name):
    ds = both()[name]
    cs = containers(ds)
    for c in cs:
        # What the container runs with: its own securityContext over the pod's.
        sc = {**pod(ds)["securityContext"], **c["securityContext"]}
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["runAsUser"] == 65534 and sc["runAsGroup"] == 65534, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert sc.get("privileged") in (None, False), c["name"]
    assert len(cs) >= 4  # install-noop, network-tools, at least one course, pause


@pytest.mark.parametrize("name", [puller.GENERAL, puller.GPU])
def test_every_container_has_small_nonzero_requests_and_limits(name):
    for c in containers(both()[name]):
        req, lim = c["resources"]["requests"], c["resources"]["limits"]
        assert 0 < quantity(req["cpu"]) <= quantity(lim["cpu"]) <= 0.1, c["name"]
        assert 0 < quantity(req["memory"]) <= quantity(lim["memory"]) <= 64 * 1024**2, c["name"]


@pytest.mark.parametrize("name", [puller.GENERAL, puller.GPU])
def test_pod_has_no_token_no_host_access_and_runtime_default_seccomp(name):
    spec = pod(both()[name])
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65534
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key)
    # The only volume is the emptyDir holding the no-op, bounded in size.
    assert spec["volumes"] == [
        {"name": puller.NOOP_VOLUME, "emptyDir": {"sizeLimit": puller.NOOP_SIZE_LIMIT}}
    ]


# --- nothing from a course image executes ----------------------------------------------


@pytest.mark.parametrize("name", [puller.GENERAL, puller.GPU])
def test_only_the_trusted_noop_runs(name):
    spec = pod(both()[name])
    first, *rest = spec["initContainers"]
    # The trusted init container comes first, from the operator's own image, and is the only
    # one that may write the emptyDir.
    assert first["name"] == puller.INSTALL_CONTAINER and first["image"] == OPERATOR_IMAGE
    assert first["command"] == ["cp", puller.NOOP_IN_OPERATOR_IMAGE, puller.NOOP]
    assert first["volumeMounts"] == [{"name": puller.NOOP_VOLUME, "mountPath": puller.NOOP_MOUNT}]
    assert rest
    for c in rest:
        # command replaces the image's entrypoint; no args means the image's cmd is dropped too.
        assert c["command"] == [puller.NOOP], c["name"]
        assert "args" not in c, c["name"]
        assert c["workingDir"] == puller.NOOP_MOUNT, c["name"]
        assert c["volumeMounts"] == [
            {"name": puller.NOOP_VOLUME, "mountPath": puller.NOOP_MOUNT, "readOnly": True}
        ], c["name"]
        assert puller.NOOP.startswith(puller.NOOP_MOUNT + "/")


def test_no_shell_anywhere_so_images_without_one_pull():
    text = json.dumps(both())
    assert "/bin/sh" not in text and '"sh"' not in text and "echo" not in text


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("gcc") is None, reason="needs root (chroot) and gcc")
def test_the_noop_runs_as_nobody_inside_an_image_with_nothing_but_itself(tmp_path):
    """An image without a shell or a libc: a root filesystem holding only the emptyDir mount."""
    noop = tmp_path / "noop"
    subprocess.run(
        ["gcc", "-static", "-Os", "-s", "-o", str(noop), str(REPO / "images/noop/noop.c")], check=True
    )
    root = tmp_path / "rootfs"
    mount = root / puller.NOOP_MOUNT.lstrip("/")
    mount.mkdir(parents=True)
    shutil.copy2(noop, root / puller.NOOP.lstrip("/"))
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        puller.NOOP_MOUNT.lstrip("/"),
        puller.NOOP.lstrip("/"),
    ]
    command = pod(both()[puller.GENERAL])["initContainers"][-1]["command"]
    res = subprocess.run(["chroot", "--userspec=65534:65534", str(root), *command], capture_output=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"" and res.stderr == b""


# --- every image a learner pod needs ---------------------------------------------------


def test_pulls_network_tools_and_pause_besides_the_course_images():
    general = both()[puller.GENERAL]
    by_name = {c["name"]: c for c in pod(general)["initContainers"]}
    # z2jh 4.4.0's block-cloud-metadata container; the chart packages its own version as the tag.
    assert by_name[puller.NETWORK_TOOLS_CONTAINER]["image"] == "quay.io/jupyterhub/k8s-network-tools:4.4.0"
    assert [c["image"] for c in pod(general)["containers"]] == ["registry.k8s.io/pause:3.10"]
    assert puller.images_of(general) == {c.resolved_image for c in (course("cpu-1"), course("opt-1"))}


def test_network_tools_follow_the_chart_version_and_the_hub_values():
    versioned = hub(
        chart={"repository": "https://hub.jupyter.org/helm-chart/", "name": "jupyterhub", "version": "4.4.1"}
    )
    assert puller.network_tools_image(versioned) == "quay.io/jupyterhub/k8s-network-tools:4.4.1"
    mirrored = hub(values={"singleuser": {"networkTools": {"image": {"name": "mirror.edu/nt", "tag": "7"}}}})
    assert puller.network_tools_image(mirrored) == "mirror.edu/nt:7"
    unblocked = hub(values={"singleuser": {"cloudMetadata": {"blockWithIptables": False}}})
    assert puller.network_tools_image(unblocked) is None
    names = [c["name"] for c in pod(both(unblocked)[puller.GENERAL])["initContainers"]]
    assert puller.NETWORK_TOOLS_CONTAINER not in names


def test_pause_image_is_the_hubs_setting():
    h = hub(prePull={"pauseImage": "mirror.edu/pause:3.10"})
    for ds in both(h).values():
        assert [c["image"] for c in pod(ds)["containers"]] == ["mirror.edu/pause:3.10"]


# --- NetworkPolicy -----------------------------------------------------------------------


def test_network_policy_denies_all_traffic_of_every_puller_pod():
    (np,) = puller.puller_network_policies(hub(ns="learn-ns"))
    assert np["kind"] == "NetworkPolicy" and np["apiVersion"] == "networking.k8s.io/v1"
    assert np["metadata"]["namespace"] == "learn-ns"
    spec = np["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert not spec.get("ingress") and not spec.get("egress")
    selector = spec["podSelector"]["matchLabels"]
    assert selector  # never the empty selector: that would cut the hub's own pods off too
    for ds in both(hub(ns="learn-ns")).values():
        labels = ds["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()


# --- placement: only where learner pods go ---------------------------------------------


def test_default_placement_is_z2jhs_user_pods():
    out = both()
    general, gpu = pod(out[puller.GENERAL]), pod(out[puller.GPU])
    assert general["tolerations"] == USER_TOLERATIONS
    assert "nodeSelector" not in general and "affinity" not in general
    assert GPU_TOLERATION not in general["tolerations"]
    assert gpu["tolerations"] == [*USER_TOLERATIONS, GPU_TOLERATION]
    assert gpu["nodeSelector"] == {"ol.mit.edu/gpu_node": "true"}


def test_singleuser_node_selector_and_tolerations_reach_both_pullers():
    h = hub(
        values={
            "singleuser": {
                "nodeSelector": {"pool": "learners"},
                "extraTolerations": [{"key": "learners", "operator": "Exists", "effect": "NoSchedule"}],
            }
        }
    )
    out = both(h)
    extra = {"key": "learners", "operator": "Exists", "effect": "NoSchedule"}
    assert pod(out[puller.GENERAL])["nodeSelector"] == {"pool": "learners"}
    assert pod(out[puller.GENERAL])["tolerations"] == [*USER_TOLERATIONS, extra]
    assert pod(out[puller.GPU])["nodeSelector"] == {"pool": "learners", "ol.mit.edu/gpu_node": "true"}
    assert pod(out[puller.GPU])["tolerations"] == [*USER_TOLERATIONS, extra, GPU_TOLERATION]


def test_required_affinity_and_node_purpose_as_kubespawner_builds_them():
    zone = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    h = hub(
        values={
            "scheduling": {"userPods": {"nodeAffinity": {"matchNodePurpose": "require"}}},
            "singleuser": {"extraNodeAffinity": {"required": [zone]}},
        }
    )
    out = both(h)
    terms = lambda ds: pod(ds)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][  # noqa: E731
        "nodeSelectorTerms"
    ]
    purpose = {"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}
    assert terms(out[puller.GENERAL]) == [zone, {"matchExpressions": [purpose]}]
    # GPU learner pods: the GPU label is ANDed into every term (course_spawner.merge_traits).
    gpu_expr = {"key": "ol.mit.edu/gpu_node", "operator": "In", "values": ["true"]}
    assert terms(out[puller.GPU]) == [
        {"matchExpressions": zone["matchExpressions"] + [gpu_expr]},
        {"matchExpressions": [purpose, gpu_expr]},
    ]


def test_prefer_node_purpose_restricts_nothing():
    h = hub(values={"scheduling": {"userPods": {"nodeAffinity": {"matchNodePurpose": "prefer"}}}})
    assert "affinity" not in pod(both(h)[puller.GENERAL])


def test_gpu_courses_that_fit_nowhere_are_left_out_with_a_reason():
    h = hub(values={"singleuser": {"nodeSelector": {"ol.mit.edu/gpu_node": "false"}}})
    w = winners(course("cpu-1"), course("gpu-1", gpu="required"), course("opt-1", gpu="optional"))
    out = puller.desired_pullers(h, w, operator_image=OPERATOR_IMAGE)
    assert out[puller.GPU] is None
    assert puller.images_of(out[puller.GENERAL]) == {w["cpu-1"].resolved_image, w["opt-1"].resolved_image}
    reasons = puller.unpulled_reasons(h, w)
    assert set(reasons) == {"gpu-1"}
    assert "spec.values.singleuser.nodeSelector" in reasons["gpu-1"]


def test_without_gpu_nodes_gpu_required_courses_say_why():
    h = hub(singleuser={})
    w = winners(course("gpu-1", gpu="required"), course("cpu-1"))
    out = puller.desired_pullers(h, w, operator_image=OPERATOR_IMAGE)
    assert out[puller.GPU] is None and puller.images_of(out[puller.GENERAL]) == {w["cpu-1"].resolved_image}
    reasons = puller.unpulled_reasons(h, w)
    assert set(reasons) == {"gpu-1"} and "spec.singleuser.gpuNodes" in reasons["gpu-1"]


def test_malformed_placement_values_place_no_puller():
    h = hub(values={"singleuser": {"extraTolerations": "everything"}})
    w = winners(course("cpu-1"))
    assert puller.desired_pullers(h, w)[puller.GENERAL] is None
    assert "spec.values.singleuser.extraTolerations" in puller.unpulled_reasons(h, w)["cpu-1"]


# --- pull secrets: only the hub's namespace ----------------------------------------------


def test_pull_secrets_come_only_from_courses_in_the_hubs_namespace():
    h = hub(ns="jupyter")
    home = course("home-1", secret="home-creds")
    foreign = course("foreign-1", ns="other", secret="hub-registry-creds")
    public_foreign = course("public-1", ns="other")
    w = winners(home, foreign, public_foreign)
    ds = puller.desired_pullers(h, w, operator_image=OPERATOR_IMAGE)[puller.GENERAL]
    assert ds is not None
    assert pod(ds)["imagePullSecrets"] == [{"name": "home-creds"}]
    # The foreign course's image is not pulled at all (it would fail without its credentials
    # and hold the whole DaemonSet back); a foreign course without a secret pulls as usual.
    assert puller.images_of(ds) == {home.resolved_image, public_foreign.resolved_image}
    reasons = puller.unpulled_reasons(h, w)
    assert set(reasons) == {"foreign-1"}
    assert "other" in reasons["foreign-1"] and "jupyter" in reasons["foreign-1"]
    assert "spec.imagePullSecretRef" in reasons["foreign-1"]


def test_no_reasons_while_pre_pulling_is_off():
    h = hub(prePull={"enabled": False}, singleuser={})
    assert puller.unpulled_reasons(h, winners(course("gpu-1", gpu="required"))) == {}


# --- names -------------------------------------------------------------------------------


def test_32_realistic_slugs_and_the_pullers_own_containers_never_collide():
    w = winners(*(course(s, gpu="required" if s in GPU_SLUGS else "none") for s in SLUGS_32))
    w |= winners(course("install-noop"), course("network-tools"), course("pause"))
    for ds in puller.desired_pullers(hub(), w).values():
        assert ds is not None
        names = [c["name"] for c in containers(ds)]
        assert len(names) == len(set(names))
        for n in names:
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", n), n


@given(st.lists(st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", fullmatch=True), max_size=30))
def test_container_names_unique_for_any_slugs(slugs):
    ds = puller.desired_pullers(hub(), winners(*(course(s) for s in slugs)))[puller.GENERAL]
    if not slugs:
        assert ds is None
        return
    assert ds is not None
    names = [c["name"] for c in containers(ds)]
    assert len(names) == len(set(names)) == len({s.lower() for s in slugs}) + 3


def test_operator_image_setting_defaults_to_the_pullers_default():
    """Without COURSEHUB_OPERATOR_IMAGE the no-op comes from the chart's default image."""
    from coursehub.settings import Settings

    assert Settings.model_fields["operator_image"].default == puller.DEFAULT_OPERATOR_IMAGE


# --- chunks: one DaemonSet per few hundred images ------------------------------------------


def rolled(out: dict[str, dict | None]) -> dict[str, dict | None]:
    """The pullers as they would be read back (the live state of the next round)."""
    return {n: json.loads(json.dumps(ds)) for n, ds in out.items() if ds is not None}


def chunks_of(out: dict[str, dict | None], kind: str = puller.GENERAL) -> dict[str, set[str]]:
    return {n: puller.images_of(ds) for n, ds in out.items() if ds is not None and puller.kind_of(n) == kind}


def many(n: int, prefix: str = "c", **kw) -> list[CourseRecord]:
    return [course(f"{prefix}{i:04d}", **kw) for i in range(n)]


def test_a_hub_with_many_courses_gets_one_daemonset_per_chunk_and_each_course_in_exactly_one():
    cs = many(7)
    out = puller.desired_pullers(hub(), winners(*cs), images_max=3)
    general = chunks_of(out)
    assert sorted(general) == ["coursehub-puller", "coursehub-puller-1", "coursehub-puller-2"]
    assert [len(general[n]) for n in sorted(general)] == [3, 3, 1]
    assert set().union(*general.values()) == {c.resolved_image for c in cs}
    assert out[puller.GPU] is None
    # each chunk is a DaemonSet of its own: its own selector, all of them under the deny-all policy
    for name in general:
        ds = out[name]
        assert ds is not None
        assert ds["spec"]["selector"]["matchLabels"]["coursehub.dev/puller"] == name
        assert ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "coursehub-puller"
        assert containers(ds)[0]["name"] == puller.INSTALL_CONTAINER


def test_chunk_names_are_parsed_only_in_their_own_spelling():
    assert puller.chunk_of("coursehub-puller") == (puller.GENERAL, 0)
    assert puller.chunk_of("coursehub-puller-12") == (puller.GENERAL, 12)
    assert puller.chunk_of("coursehub-puller-gpu") == (puller.GPU, 0)
    assert puller.chunk_of("coursehub-puller-gpu-3") == (puller.GPU, 3)
    for other in (
        "coursehub-puller-0",
        "coursehub-puller-01",
        "coursehub-puller-x",
        "hub",
        "coursehub-pullers",
    ):
        assert puller.chunk_of(other) is None, other
    for kind in (puller.GENERAL, puller.GPU):
        for i in (0, 1, 250):
            assert puller.chunk_of(puller.chunk_name(kind, i)) == (kind, i)


def test_a_course_change_rewrites_only_its_own_chunk():
    cs = many(7)
    first = puller.desired_pullers(hub(), winners(*cs), images_max=3)
    live = rolled(first)
    # one more course: the partial last chunk takes it, the full ones are the same objects
    more = puller.desired_pullers(hub(), winners(*cs, course("a-new")), images_max=3, live=live)
    assert more["coursehub-puller"] == first["coursehub-puller"]
    assert more["coursehub-puller-1"] == first["coursehub-puller-1"]
    assert chunks_of(more)["coursehub-puller-2"] == {cs[6].resolved_image, course("a-new").resolved_image}
    # a course goes: only its chunk loses it (no shuffle of the others), and the hole is
    # filled by the next new course
    gone = [c for c in cs if c.slug != "c0001"]
    fewer = puller.desired_pullers(hub(), winners(*gone), images_max=3, live=live)
    assert fewer["coursehub-puller-1"] == first["coursehub-puller-1"]
    assert fewer["coursehub-puller-2"] == first["coursehub-puller-2"]
    assert chunks_of(fewer)["coursehub-puller"] == {cs[0].resolved_image, cs[2].resolved_image}
    refill = puller.desired_pullers(hub(), winners(*gone, course("zz")), images_max=3, live=rolled(fewer))
    assert course("zz").resolved_image in chunks_of(refill)["coursehub-puller"]
    # a new digest for a course stays in its chunk
    moved = dataclasses.replace(cs[4], resolved_image="r.example.edu/nb@sha256:" + "e" * 64)
    changed = puller.desired_pullers(hub(), winners(*cs[:4], moved, *cs[5:]), images_max=3, live=live)
    assert changed["coursehub-puller"] == first["coursehub-puller"]
    assert changed["coursehub-puller-2"] == first["coursehub-puller-2"]
    assert moved.resolved_image in chunks_of(changed)["coursehub-puller-1"]


def test_chunks_no_course_needs_any_more_are_removed():
    cs = many(7)
    live = rolled(puller.desired_pullers(hub(), winners(*cs), images_max=3))
    out = puller.desired_pullers(hub(), winners(*cs[:2]), images_max=3, live=live)
    assert out["coursehub-puller-1"] is None and out["coursehub-puller-2"] is None
    assert chunks_of(out) == {"coursehub-puller": {cs[0].resolved_image, cs[1].resolved_image}}
    off = puller.desired_pullers(hub(prePull={"enabled": False}), winners(*cs), images_max=3, live=live)
    assert set(off) == {puller.GENERAL, puller.GPU, "coursehub-puller-1", "coursehub-puller-2"}
    assert all(ds is None for ds in off.values())


def test_chunks_are_packed_afresh_when_one_is_too_big_or_deletions_left_too_many():
    cs = many(7)
    # a hub from the version with one DaemonSet per kind (or a lowered setting)
    one = rolled(puller.desired_pullers(hub(), winners(*cs), images_max=250))
    assert list(one) == [puller.GENERAL]
    split = puller.desired_pullers(hub(), winners(*cs), images_max=3, live=one)
    assert [len(v) for _, v in sorted(chunks_of(split).items())] == [3, 3, 1]
    # 4 courses in 4 chunks where 2 would do: left alone up to twice as many
    live = rolled(puller.desired_pullers(hub(), winners(*many(12)), images_max=3))
    keep = [c for c in many(12) if c.slug in {"c0000", "c0003", "c0006", "c0009"}]
    sparse = puller.desired_pullers(hub(), winners(*keep), images_max=3, live=live)
    assert [len(v) for _, v in sorted(chunks_of(sparse).items())] == [1, 1, 1, 1]
    keep = keep[:3]  # 3 courses in 3 chunks where 1 would do: packed afresh
    repacked = puller.desired_pullers(hub(), winners(*keep), images_max=3, live=live)
    assert [len(v) for _, v in sorted(chunks_of(repacked).items())] == [3]
    assert repacked["coursehub-puller-3"] is None


def test_gpu_courses_get_chunks_of_their_own_and_optional_ones_are_in_both_kinds():
    cs = many(4, "g", gpu="required") + many(2, "o", gpu="optional") + many(3, "n")
    out = puller.desired_pullers(hub(), winners(*cs), images_max=2)
    gpu, general = chunks_of(out, puller.GPU), chunks_of(out, puller.GENERAL)
    assert sorted(gpu) == ["coursehub-puller-gpu", "coursehub-puller-gpu-1", "coursehub-puller-gpu-2"]
    assert sorted(general) == ["coursehub-puller", "coursehub-puller-1", "coursehub-puller-2"]
    optional = {c.resolved_image for c in cs if c.spec.gpu == "optional"}
    assert optional <= set().union(*gpu.values()) and optional <= set().union(*general.values())
    for name in gpu:
        assert GPU_TOLERATION in pod(out[name])["tolerations"]


def test_each_chunk_names_only_its_own_courses_pull_secrets():
    cs = [course("a", secret="creds-a"), course("b", secret="creds-b"), course("c")]
    out = puller.desired_pullers(hub(), winners(*cs), images_max=1)
    secrets = {n: pod(ds).get("imagePullSecrets") for n, ds in out.items() if ds}
    assert secrets == {
        "coursehub-puller": [{"name": "creds-a"}],
        "coursehub-puller-1": [{"name": "creds-b"}],
        "coursehub-puller-2": None,
    }


def test_a_burst_holds_the_partial_last_chunk_but_writes_a_full_one_at_once():
    def held(before: int, after: int) -> set[str]:
        live = rolled(puller.desired_pullers(hub(), winners(*many(before)), images_max=3))
        desired = puller.desired_pullers(hub(), winners(*many(after)), images_max=3, live=live)
        return puller.held_pullers(desired, live, burst=True, held_for=None, hold_max=10, images_max=3)

    # 4 -> 8: coursehub-puller-1 fills up (1 -> 3 images: written now); -2 is new and part
    # full: created once the burst is over (or full), not now and again then
    assert held(4, 8) == {"coursehub-puller-2"}
    assert held(4, 9) == set()
    # 7 -> 8: coursehub-puller-2 goes from 1 to 2 images, still room for more: it waits
    assert held(7, 8) == {"coursehub-puller-2"}
    # 1 -> 2: one partial chunk, as before chunks (a live puller waits for the burst's end)
    assert held(1, 2) == {puller.GENERAL}
    # 0 -> 5: nothing of the kind is live: the hub's first pull is never held
    assert held(0, 5) == set()


def test_a_burst_never_holds_the_chunk_that_takes_over_from_one_it_deletes():
    # 12 courses in 3 chunks of 4; 3 stay, one in each: packed afresh into one part-full chunk,
    # and the other two are deleted in the same round, so that one must be written now or the
    # courses it takes over are in no puller until the burst ends
    live = rolled(puller.desired_pullers(hub(), winners(*many(12)), images_max=4))
    stay = [c for c in many(12) if c.slug in {"c0001", "c0005", "c0009"}]
    desired = puller.desired_pullers(hub(), winners(*stay), images_max=4, live=live)
    assert chunks_of(desired) == {puller.GENERAL: {c.resolved_image for c in stay}}
    assert sorted(n for n, ds in desired.items() if ds is None and n in live) == [
        "coursehub-puller-1",
        "coursehub-puller-2",
    ]
    held = puller.held_pullers(desired, live, burst=True, held_for=None, hold_max=10, images_max=4)
    assert held == set()


@given(st.lists(st.sets(st.integers(0, 40), max_size=40), min_size=1, max_size=6), st.integers(1, 9))
def test_any_sequence_of_course_sets_keeps_every_course_in_exactly_one_chunk_of_at_most_the_max(seq, m):
    live: dict[str, dict | None] = {}
    where: dict[str, str] = {}
    for ids in seq:
        cs = [course(f"s{i}") for i in sorted(ids)]
        out = puller.desired_pullers(hub(), winners(*cs), images_max=m, live=live)
        general = chunks_of(out)
        images = [img for v in general.values() for img in v]
        assert sorted(images) == sorted(c.resolved_image for c in cs)
        assert all(len(v) <= m for v in general.values())
        assert not any(v == set() for v in general.values())
        now = {img: n for n, v in general.items() for img in v}
        needed = -(-len(cs) // m)
        if len(live) <= 2 * needed and all(len(puller.course_containers(d)) <= m for d in live.values() if d):
            # not packed afresh: a course that stays, stays in its chunk
            assert all(now[img] == where[img] for img in now if img in where)
        where = now
        live = rolled(out)
