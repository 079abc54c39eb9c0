"""Pure: the pre-puller DaemonSets of a hub, and whether they hold an image on every node.

The technique z2jh uses, owned by coursehub instead of Helm so that a course change never
becomes a values change (which would restart the hub): one init container per image runs a
trivial command (pulling the image), then a pause container keeps the pod Ready.
"""

from __future__ import annotations

import hashlib
import re

from .allowlist import gpu_settings, hub_labels
from .courses import CourseRecord, HubRecord

GENERAL = "coursehub-puller"
GPU = "coursehub-puller-gpu"
# z2jh's user pods tolerate the dedicated-user taints; the puller goes where they go.
USER_POD_TOLERATIONS = [
    {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
    {"key": "hub.jupyter.org_dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
]


def container_name(slug: str) -> str:
    """A DNS label for a slug's init container, unique per slug.

    Sanitising alone collides ('a.b' and 'a_b' both become 'a-b'), so a hash of the exact
    (lower-cased) slug is appended.
    """
    slug = slug.lower()
    base = re.sub(r"[^a-z0-9]+", "-", slug).strip("-")[:48].rstrip("-") or "course"
    digest = hashlib.sha256(slug.encode()).hexdigest()[:8]
    return f"pull-{base}-{digest}"


def puller_images(winners: dict[str, CourseRecord]) -> dict[str, dict[str, str]]:
    """DaemonSet name -> {slug: image}: GPU-only courses on GPU nodes, others where user pods go."""
    general: dict[str, str] = {}
    gpu: dict[str, str] = {}
    for slug, c in winners.items():
        if not c.spec.pre_pull or not c.resolved_image:
            continue
        if c.spec.gpu in ("none", "optional"):
            general[slug] = c.resolved_image
        if c.spec.gpu in ("required", "optional"):
            gpu[slug] = c.resolved_image
    return {GENERAL: general, GPU: gpu}


def puller_daemonset(hub: HubRecord, name: str, images: dict[str, str], *, pull_secrets: list[str]) -> dict:
    pause = hub.spec.pre_pull.pause_image if hub.spec.pre_pull else "registry.k8s.io/pause:3.10"
    selector = {"app.kubernetes.io/name": "coursehub-puller", "coursehub.dev/puller": name}
    tolerations = list(USER_POD_TOLERATIONS)
    node_selector = None
    if name == GPU:
        gpu = gpu_settings(hub) or {}
        tolerations += gpu.get("tolerations", [])
        node_selector = gpu.get("nodeSelector")
    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    small = {"requests": {"cpu": "0", "memory": "0"}, "limits": {"cpu": "100m", "memory": "64Mi"}}
    init = [
        {
            "name": container_name(slug),
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", "echo pulled"],
            "resources": small,
            "securityContext": security,
        }
        for slug, image in sorted(images.items())
    ]
    pod_spec: dict = {
        "initContainers": init,
        "containers": [
            {
                "name": "pause",
                "image": pause,
                "imagePullPolicy": "IfNotPresent",
                "resources": small,
                "securityContext": {**security, "runAsNonRoot": True, "runAsUser": 65535},
            }
        ],
        "tolerations": tolerations,
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in sorted(set(pull_secrets))]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": hub.namespace, "labels": {**hub_labels(hub), **selector}},
        "spec": {
            "selector": {"matchLabels": selector},
            # Every node pulls at once: a puller pod is cheap and learners wait for the slowest node.
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "100%"}},
            "template": {"metadata": {"labels": {**hub_labels(hub), **selector}}, "spec": pod_spec},
        },
    }


def desired_pullers(hub: HubRecord, winners: dict[str, CourseRecord]) -> dict[str, dict | None]:
    """DaemonSet name -> manifest, or None when it should not exist."""
    enabled = hub.spec.pre_pull.enabled if hub.spec.pre_pull else True
    out: dict[str, dict | None] = {GENERAL: None, GPU: None}
    if not enabled:
        return out
    secrets = [c.spec.image_pull_secret_ref.name for c in winners.values() if c.spec.image_pull_secret_ref]
    for name, images in puller_images(winners).items():
        if name == GPU and gpu_settings(hub) is None:
            continue
        if images:
            out[name] = puller_daemonset(hub, name, images, pull_secrets=secrets)
    return out


def puller_network_policies(hub: HubRecord) -> list[dict]:
    """NetworkPolicies for the puller pods (applied with the pullers, owned by the hub)."""
    return []


def rolled_out(ds: dict | None) -> bool:
    """Every desired pod runs the current template and is Ready (init containers done: images pulled)."""
    if not ds:
        return False
    st = ds.get("status") or {}
    desired = st.get("desiredNumberScheduled", 0)
    return (
        st.get("observedGeneration", 0) >= ds["metadata"].get("generation", 1)
        and st.get("updatedNumberScheduled", 0) == desired
        and st.get("numberReady", 0) == desired
        and st.get("numberUnavailable", 0) == 0
    )


def images_of(ds: dict | None) -> set[str]:
    if not ds:
        return set()
    return {c["image"] for c in ds["spec"]["template"]["spec"].get("initContainers", [])}


def pulled_images(desired: dict[str, dict | None], live: dict[str, dict | None]) -> set[str]:
    """Images on every node they belong on: each DaemonSet meant to hold the image holds it
    in its live spec and is fully rolled out (an optional-GPU course needs both pullers)."""
    wanted: dict[str, set[str]] = {}
    for name, ds in desired.items():
        for image in images_of(ds):
            wanted.setdefault(image, set()).add(name)
    return {
        image
        for image, names in wanted.items()
        if all(rolled_out(live.get(n)) and image in images_of(live.get(n)) for n in names)
    }
