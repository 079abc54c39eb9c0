"""Pure: the hub's allowlist (docs/CONTRACTS.md) and which digest of each course is offered."""

from __future__ import annotations

import json

from .courses import CourseRecord, HubRecord, unknown_course_policy
from ..api.jupyterhubdeployment import Limits

ALLOWLIST_CONFIGMAP = "coursehub-allowlist"
ALLOWLIST_KEY = "allowlist.json"
MANAGED_BY = {"app.kubernetes.io/managed-by": "coursehub"}


def hub_labels(hub: HubRecord) -> dict[str, str]:
    return {**MANAGED_BY, "coursehub.dev/hub": hub.name}


def parse_taint(text: str) -> dict:
    """'key=value:Effect' or 'key:Effect' -> a toleration that matches it."""
    kv, effect = text.rsplit(":", 1)
    if "=" in kv:
        k, v = kv.split("=", 1)
        return {"key": k, "operator": "Equal", "value": v, "effect": effect}
    return {"key": kv, "operator": "Exists", "effect": effect}


def gpu_settings(hub: HubRecord) -> dict | None:
    su = hub.spec.singleuser
    if not su or not su.gpu_nodes:
        return None
    k, v = su.gpu_nodes.label.split("=", 1)
    tolerations = [parse_taint(su.gpu_nodes.toleration)] if su.gpu_nodes.toleration else []
    return {"nodeSelector": {k: v}, "tolerations": tolerations, "resource": su.gpu_nodes.resource}


def published_images(
    winners: dict[str, CourseRecord], *, publish_after_pull: bool, pulled: set[str], previous: dict[str, str]
) -> dict[str, str]:
    """slug -> the digest-pinned image the hub offers now.

    With publishAfterPull a new course, or a course's new digest, is offered only once the
    pre-puller has it on every node; meanwhile the previously published digest stays.
    """
    out: dict[str, str] = {}
    for slug, course in winners.items():
        target = course.resolved_image
        if target is None:
            continue
        waits_for_pull = publish_after_pull and course.spec.pre_pull
        if not waits_for_pull or target in pulled:
            out[slug] = target
        elif slug in previous:
            out[slug] = previous[slug]
    return out


def course_entry(course: CourseRecord, image: str) -> dict:
    s = course.spec
    res = s.resources
    return {
        "course": s.course,
        "image": image,
        "displayName": s.display_name or s.course,
        "gpu": s.gpu,
        "defaultNotebook": s.default_notebook,
        "resources": {
            "memory": {
                "limit": res.memory.limit if res and res.memory else None,
                "guarantee": res.memory.guarantee if res and res.memory else None,
            },
            "cpu": {
                "limit": res.cpu.limit if res and res.cpu else None,
                "guarantee": res.cpu.guarantee if res and res.cpu else None,
            },
        },
        "imagePullSecret": s.image_pull_secret_ref.name if s.image_pull_secret_ref else None,
    }


def allowlist_document(hub: HubRecord, winners: dict[str, CourseRecord], published: dict[str, str]) -> dict:
    courses = {slug: course_entry(winners[slug], image) for slug, image in sorted(published.items())}
    default = hub.spec.courses.default.lower() if hub.spec.courses and hub.spec.courses.default else None
    return {
        "version": 1,
        "hub": hub.name,
        "default": default if default in courses else None,
        "onUnknown": unknown_course_policy(hub),
        "gpu": gpu_settings(hub),
        "courses": courses,
        "limits": limits_settings(hub),
    }


def serialize(doc: dict) -> str:
def limits_settings(hub: HubRecord) -> dict:
    """The hub's server limits (spec.limits, defaults when unset), read live by the hub.

    `identity: gateway` tells the hub that the SSO gateway is the only way in, so the
    identity headers oauth2-proxy sets are trusted and counted per person.
    """
    limits = hub.spec.limits or Limits()
    gated = bool(hub.spec.gateway and hub.spec.gateway.oidc)
    return {
        "activeServers": limits.active_servers,
        "serversPerIdentity": limits.servers_per_identity,
        "gpuServersPerIdentity": limits.gpu_servers_per_identity,
        "identity": "gateway" if gated else None,
    }


    """Compact and sorted: the same set of courses always gives the same bytes."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def allowlist_configmap(hub: HubRecord, doc: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ALLOWLIST_CONFIGMAP, "namespace": hub.namespace, "labels": hub_labels(hub)},
        "data": {ALLOWLIST_KEY: serialize(doc)},
    }


def previously_published(configmap: dict | None) -> dict[str, str]:
    """slug -> image from the live allowlist ConfigMap (what learners get right now)."""
    if not configmap:
        return {}
    try:
        doc = json.loads((configmap.get("data") or {}).get(ALLOWLIST_KEY, "{}"))
        return {slug: entry["image"] for slug, entry in (doc.get("courses") or {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
