"""The whole path: operator -> helm values and allowlist -> a real JupyterHub configured with
exactly the values the operator deployed -> a learner's launch link -> the course's digest."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from test_hub_spawn import container, env_of, launched_pod, stop

from coursehub_dev.paths import Z2JH_CHART
from fixtures.cluster import get_yaml

pytestmark = pytest.mark.e2e


def test_launch_link_gets_the_digest_the_operator_published(
    cluster, namespace, operator_factory, oci_registry, unique_repo, jupyterhub_factory, request
):
    ns = namespace
    digest = oci_registry.push_image(unique_repo, "uai_source-uai.0a", "full-stack")
    operator_factory([ns])
    hub = {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": "JupyterHubDeployment",
        "metadata": {"name": "learn"},
        "spec": {
            "chart": {"path": str(Z2JH_CHART)},
            "domain": "nb.example.edu",
            "auth": {"mode": "tmp", "allowUngated": True},
            "database": {"type": "postgres", "urlSecretRef": {"name": "db", "key": "DATABASE_URL"}},
            "courses": {"onUnknown": "reject"},
            "values": {"proxy": {"service": {"type": "ClusterIP"}}},
        },
    }
    course = {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": "CourseImage",
        "metadata": {"name": "uai-0a"},
        "spec": {
            "course": "uai_source-uai.0a",
            "image": oci_registry.ref(unique_repo, "uai_source-uai.0a"),
            "defaultNotebook": "intro.ipynb",
        },
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db"},
        "stringData": {"DATABASE_URL": "postgresql://unused@localhost/hub"},
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all([secret, hub, course]))
    cluster.kubectl(
        "wait", "--for=condition=Ready", "courseimage/uai-0a", "jhd/learn", "-n", ns, "--timeout=180s"
    )

    # The values helm actually deployed for this hub, exactly as z2jh would receive them.
    values = json.loads(
        subprocess.run(
            [cluster.binaries["helm"], "get", "values", "learn", "-n", ns, "-o", "json"],
            capture_output=True,
            text=True,
            env=cluster.env(),
            check=True,
        ).stdout
    )
    running = jupyterhub_factory(values, namespace=ns, kubeconfig=cluster.kubeconfig)
    request.addfinalizer(running.stop)  # :8081 is free for the next module's hub

    user, pod = launched_pod(
        running, cluster, course="UAI_SOURCE-UAI.0A", tag="latest", image="evil.example/x:1"
    )
    assert container(pod)["image"] == f"{oci_registry.host}/{unique_repo}@{digest}"
    assert env_of(pod)["JUPYTERHUB_DEFAULT_URL"] == "/lab/tree/intro.ipynb"
    stop(running, cluster, user)

    # Unknown courses are refused by this hub's policy, with a page that says so.
    r = running.browser().get(running.url + "/hub/tmplogin?course=not-offered", timeout=60)
    assert r.status_code == 400 and "not offered" in r.text
    assert get_yaml(cluster, "courseimage", "uai-0a", "-n", ns)["status"]["resolvedImage"].endswith(digest)
