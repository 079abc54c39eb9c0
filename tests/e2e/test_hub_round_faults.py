"""A hub round on a real API server: steps fail on their own; a sharded allowlist reaches the hub.

A ValidatingAdmissionPolicy refuses the puller DaemonSets of one namespace (a write that
fails for real, from the API server); the hub's allowlist beyond 1 MiB is written as the
operator writes it and read back by the hub module, as the hub's own ServiceAccount.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml

from coursehub.api.courseimage import CourseImageSpec
from coursehub.api.jupyterhubdeployment import JupyterHubDeploymentSpec
from coursehub.desired import allowlist as allowlist_mod
from coursehub.desired.courses import CourseRecord, HubRecord
from coursehub.desired.hub_rbac import DEFAULT_HUB_SERVICE_ACCOUNT
from coursehub.desired.hub_round import Observed, plan_round
from coursehub.desired.puller import GENERAL
from coursehub.hub.course_spawner import AllowlistCache, AllowlistSource
from coursehub_dev import samples
from coursehub_dev.samples import course_manifest
from fixtures.cluster import wait_until

pytestmark = pytest.mark.e2e


def apply(cluster, ns, *objs):
    cluster.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=yaml.safe_dump_all(objs))


def get_json(cluster, *args) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def cond(obj: dict, type_: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def hub_cond(cluster, ns, type_) -> dict:
    return cond(get_json(cluster, "jhd", "learn", "-n", ns), type_)


def deny_pullers(ns: str) -> list[dict]:
    name = f"deny-pullers-{ns}"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["daemonsets"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "!object.metadata.name.startsWith('coursehub-puller')",
                        "message": "pullers refused by the test policy",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
            },
        },
    ]


def test_a_refused_write_blocks_neither_publication_nor_helm_nor_status(
    cluster, namespace, operator_factory, oci_registry, unique_repo
):
    ns = namespace
    policy = deny_pullers(ns)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(policy))
    try:
        operator_factory([ns])
        apply(cluster, ns, samples.hub_manifest("learn"))
        oci_registry.push_image(unique_repo, "v1", "refused-puller")
        apply(cluster, ns, course_manifest("c1", "stats_101", oci_registry.ref(unique_repo, "v1")))
        # The pullers are refused: the hub says so on CoursesPublished, and nothing else waits.
        c = wait_until(
            lambda: (x := hub_cond(cluster, ns, "CoursesPublished")).get("reason") == "ApplyFailed" and x,
            timeout=120,
            what="CoursesPublished=False ApplyFailed",
        )
        assert "pullers" in c["message"] and "pullers refused by the test policy" in c["message"]
        wait_until(
            lambda: hub_cond(cluster, ns, "ReleaseDeployed").get("status") == "True",
            timeout=180,
            what="release deployed while the pullers are refused",
        )
        wait_until(
            lambda: (
                cond(get_json(cluster, "courseimage", "c1", "-n", ns), "Published").get("status") == "True"
            ),
            timeout=60,
            what="course published while the pullers are refused",
        )
        doc = json.loads(
            get_json(cluster, "configmap", allowlist_mod.ALLOWLIST_CONFIGMAP, "-n", ns)["data"][
                allowlist_mod.ALLOWLIST_KEY
            ]
        )
        assert "stats_101" in doc["courses"]
        assert cluster.kubectl("get", "daemonset", GENERAL, "-n", ns, check=False).returncode != 0
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all(policy))
    # Once the API server accepts them again, the next round writes them and the hub recovers.
    wait_until(
        lambda: hub_cond(cluster, ns, "CoursesPublished").get("status") == "True",
        timeout=120,
        what="CoursesPublished=True after the policy is gone",
    )
    assert cluster.kubectl("get", "daemonset", GENERAL, "-n", ns, check=False).returncode == 0


# -- a sharded allowlist, as the hub reads it ----------------------------------------------------
def long_course(ns: str, i: int) -> CourseRecord:
    spec = {
        "course": f"{i:05d}" + "x" * 58,
        "image": "r.example.edu/" + "n" * 480 + ":t",
        "displayName": "D" * 128,
        "defaultNotebook": "nb/" + "p" * 500 + ".ipynb",
    }
    image = "r.example.edu/" + "n" * 480 + f"@sha256:{i:064d}"
    return CourseRecord(
        ns, f"c{i}", f"u{i}", "2026-01-01T00:00:00Z", 1, (), CourseImageSpec.model_validate(spec), image
    )


async def read_as_hub(cluster, ns: str) -> tuple[int, str | None]:
    """The allowlist as the hub module reads it, through the API server, as the hub's ServiceAccount."""
    from kubernetes_asyncio import client, config

    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
    async with client.ApiClient(cfg) as api:
        api.set_default_header(
            "Impersonate-User", f"system:serviceaccount:{ns}:{DEFAULT_HUB_SERVICE_ACCOUNT}"
        )
        source = AllowlistSource(namespace=ns, cache=AllowlistCache(ttl=0))
        source.watch = False
        source.api = client.CoreV1Api(api)
        allowlist = await source.current()
        # And live, from the watch the hub keeps on the index.
        watched = AllowlistSource(namespace=ns, cache=AllowlistCache(ttl=0))
        watched.api = source.api
        watched.watcher.ensure_started()
        for _ in range(300):
            if watched.watcher.live and watched.watcher.allowlist is not None:
                break
            await asyncio.sleep(0.1)
        live = watched.watcher.allowlist
        watched.watcher.task.cancel()
        assert live is not None and len(live.courses) == len(allowlist.courses)
        return len(allowlist.courses), allowlist.default


def test_a_sharded_allowlist_written_as_the_operator_does_is_read_by_the_hub(cluster, namespace):
    ns = namespace
    spec = {
        "chart": {
            "repository": "https://hub.jupyter.org/helm-chart/",
            "name": "jupyterhub",
            "version": "4.4.1",
        },
        "domain": "nb.example.edu",
        "database": {"type": "sqlite-memory"},
        "auth": {"mode": "tmp", "allowUngated": True},
        "prePull": {"enabled": False},
        "courses": {"default": "00003" + "x" * 58},
    }
    hub = HubRecord(
        ns, "learn", "uid", "2026-01-01T00:00:00Z", 1, JupyterHubDeploymentSpec.model_validate(spec)
    )
    courses = [long_course(ns, i) for i in range(1_500)]
    plan = plan_round(Observed(hub=hub, hubs=(hub,), courses=tuple(courses), namespace_labels={}, status={}))
    objs = next(s for s in plan.steps if s.name == "allowlist").apply
    assert len([o for o in objs if o["metadata"]["name"].startswith(allowlist_mod.SHARD_PREFIX)]) >= 2
    cluster.kubectl(
        "create", "serviceaccount", DEFAULT_HUB_SERVICE_ACCOUNT, "-n", ns
    )  # z2jh's hub ServiceAccount
    for obj in objs:  # in the plan's order: shards, Role, RoleBinding, index
        apply(cluster, ns, obj)

    count, default = asyncio.run(read_as_hub(cluster, ns))
    assert count == 1_500 and default == "00003" + "x" * 58
    # The hub may read its allowlist and its shards, and no other ConfigMap.
    who = f"--as=system:serviceaccount:{ns}:{DEFAULT_HUB_SERVICE_ACCOUNT}"
    shard = next(o for o in objs if o["metadata"]["name"].startswith(allowlist_mod.SHARD_PREFIX))
    can = lambda *a: cluster.kubectl("auth", "can-i", *a, "-n", ns, who, check=False).stdout.strip()  # noqa: E731
    assert can("get", f"configmap/{shard['metadata']['name']}") == "yes"
    assert can("get", "configmap/kube-root-ca.crt") == "no"
    assert can("list", "configmaps") == "no"
