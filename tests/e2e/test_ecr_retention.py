"""ECR end to end: the operator resolves through moto's server and keeps lifecycle policies true."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import yaml

from fixtures.cluster import get_yaml, wait_until
from fixtures.ecr import ECR_HOST, FAKE_AWS_ENV, ecr_client, put_image

pytestmark = pytest.mark.e2e


def ensure_repository(endpoint: str, name: str) -> None:
    """The session's moto may have the repository from another test: that one is fine."""
    client = ecr_client(endpoint)
    with contextlib.suppress(client.exceptions.RepositoryAlreadyExistsException):
        client.create_repository(repositoryName=name)


REPO = "ol-course-notebooks"


def course(name: str, slug: str, keep: int = 5) -> dict:
    return {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": "CourseImage",
        "metadata": {"name": name},
        "spec": {"course": slug, "image": f"{ECR_HOST}/{REPO}:{slug}", "retention": {"keep": keep}},
    }


def cond(cluster, ns, name, type_) -> dict:
    obj = get_yaml(cluster, "courseimage", name, "-n", ns)
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def policy(endpoint: str) -> dict | None:
    try:
        return json.loads(
            ecr_client(endpoint).get_lifecycle_policy(repositoryName=REPO)["lifecyclePolicyText"]
        )
    except Exception:
        return None


def protected_tags(doc: dict) -> set[str]:
    out = set()
    for rule in doc["rules"]:
        sel = rule["selection"]
        if sel.get("countType") == "imageCountMoreThan" and sel.get("countNumber", 0) >= 1_000_000:
            out.update(p for p in sel.get("tagPatternList", []) if "*" not in p)
    return out


def test_resolution_and_lifecycle_through_moto(cluster, namespace, operator_factory, ecr_endpoint, ecr_proxy):
    ns = namespace
    ensure_repository(ecr_endpoint, REPO)
    d1 = put_image(ecr_endpoint, REPO, "uai_source-uai.1", seed=f"{ns}-1")
    put_image(ecr_endpoint, REPO, "mitxt-6.3710.3x", seed=f"{ns}-2")
    operator_factory(
        [ns],
        env={
            **FAKE_AWS_ENV,
            "COURSEHUB_ECR_LIFECYCLE": "true",
            "COURSEHUB_AWS_ENDPOINT_URL": ecr_proxy.url,
            "COURSEHUB_RESOLVE_INTERVAL": "600",
            "COURSEHUB_RESYNC_SECONDS": "600",
        },
    )
    hub = {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": "JupyterHubDeployment",
        "metadata": {"name": "learn"},
        "spec": {
            "chart": {"path": "/nonexistent"},
            "domain": "nb.example.edu",
            "auth": {"mode": "tmp", "allowUngated": True},
            "database": {"type": "sqlite-memory"},
        },
    }
    cluster.kubectl(
        "apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all([hub, course("uai-1", "uai_source-uai.1")])
    )

    wait_until(
        lambda: cond(cluster, ns, "uai-1", "RetentionApplied").get("status") == "True",
        timeout=60,
        what="RetentionApplied",
    )
    ci = get_yaml(cluster, "courseimage", "uai-1", "-n", ns)
    assert ci["status"]["resolvedImage"] == f"{ECR_HOST}/{REPO}@{d1}"
    assert cond(cluster, ns, "uai-1", "ImageResolved")["status"] == "True"
    assert "uai_source-uai.1" in cond(cluster, ns, "uai-1", "RetentionApplied")["message"]
    assert "uai_source-uai.1" in protected_tags(policy(ecr_endpoint))

    # A second course changes the policy.
    cluster.kubectl(
        "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(course("mitxt", "mitxt-6.3710.3x", keep=3))
    )
    wait_until(
        lambda: "mitxt-6.3710.3x" in protected_tags(policy(ecr_endpoint) or {"rules": []}),
        timeout=60,
        what="policy covers the new course",
    )
    wait_until(
        lambda: cond(cluster, ns, "mitxt", "RetentionApplied").get("status") == "True",
        timeout=60,
        what="RetentionApplied on the new course",
    )

    # Nothing changes: no further put_lifecycle_policy (and no get either, within the resync interval).
    puts = ecr_proxy.counts["PutLifecyclePolicy"]
    gets = ecr_proxy.counts["GetLifecyclePolicy"]
    time.sleep(8)
    assert ecr_proxy.counts["PutLifecyclePolicy"] == puts
    assert ecr_proxy.counts["GetLifecyclePolicy"] == gets

    # Removing a course takes its protection out.
    cluster.kubectl("delete", "courseimage", "mitxt", "-n", ns, "--timeout=60s")
    wait_until(
        lambda: "mitxt-6.3710.3x" not in protected_tags(policy(ecr_endpoint)),
        timeout=60,
        what="policy drops the removed course",
    )


def test_throttled_lifecycle_becomes_condition_and_recovers(
    cluster, namespace, operator_factory, ecr_endpoint, ecr_proxy
):
    ns = namespace
    ensure_repository(ecr_endpoint, REPO)
    put_image(ecr_endpoint, REPO, "stats_101", seed=f"{ns}-s")
    ecr_proxy.fail("GetLifecyclePolicy", "ThrottlingException", times=12)
    operator_factory(
        [ns],
        env={**FAKE_AWS_ENV, "COURSEHUB_ECR_LIFECYCLE": "true", "COURSEHUB_AWS_ENDPOINT_URL": ecr_proxy.url},
    )
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(course("stats", "stats_101")))
    c = wait_until(
        lambda: (x := cond(cluster, ns, "stats", "RetentionApplied")).get("status") == "False" and x,
        timeout=60,
        what="throttling reported",
    )
    assert c["reason"] == "Throttled"
    # The rest of the course's status is unaffected.
    assert cond(cluster, ns, "stats", "ImageResolved")["status"] == "True"
    wait_until(
        lambda: cond(cluster, ns, "stats", "RetentionApplied").get("status") == "True",
        timeout=90,
        what="recovery after throttling stops",
    )
