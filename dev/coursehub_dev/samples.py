"""Sample manifests for the local control plane: the tests, the benchmarks and the demo's shapes.

The hub uses the published z2jh chart from its .tgz (no chart repository is reachable here),
an in-memory database, no gate on purpose, the dev cluster's GPU node, and a ClusterIP proxy:
kwok gives a LoadBalancer no address, and helm --atomic would wait for one.
"""

from __future__ import annotations

from .paths import Z2JH_CHART


def hub_manifest(name: str = "learn", *, domain: str = "nb.learn.example.edu", **spec) -> dict:
    base = {
        "chart": {"path": str(Z2JH_CHART)},
        "domain": domain,
        "auth": {"mode": "tmp", "allowUngated": True},
        "database": {"type": "sqlite-memory"},
        "singleuser": {
            "gpuNodes": {
                "label": "ol.mit.edu/gpu_node=true",
                "toleration": "ol.mit.edu/gpu_node=true:NoSchedule",
            }
        },
        "values": {"proxy": {"service": {"type": "ClusterIP"}}},
    }
    base.update(spec)
    return {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": "JupyterHubDeployment",
        "metadata": {"name": name},
        "spec": base,
    }


def course_manifest(name: str, slug: str, image: str, **spec) -> dict:
    return {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": "CourseImage",
        "metadata": {"name": name},
        "spec": {"course": slug, "image": image, **spec},
    }
