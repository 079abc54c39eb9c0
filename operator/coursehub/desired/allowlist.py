"""Pure: the hub's allowlist (docs/CONTRACTS.md) and which digest of each course is offered."""

from __future__ import annotations

import hashlib
import json

from ..api.jupyterhubdeployment import Limits
from ..registry.reference import is_digest_of
from .courses import CourseRecord, HubRecord, pull_secret_rule, unknown_course_policy

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
    A course not resolved by this process yet keeps what learners get now, if that is a digest
    of its own repository: an operator killed between writing the allowlist and the course's
    status would otherwise unpublish the course on restart until it resolves again.
    """
    out: dict[str, str] = {}
    for slug, course in winners.items():
        target = course.resolved_image
        if target is None:
            if is_digest_of(course.spec.image, previous.get(slug)):
                out[slug] = previous[slug]
            continue
        waits_for_pull = publish_after_pull and course.spec.pre_pull
        if not waits_for_pull or target in pulled:
            out[slug] = target
        elif slug in previous:
            out[slug] = previous[slug]
    return out


def course_entry(hub: HubRecord, course: CourseRecord, image: str) -> dict:
    s = course.spec
    # A learner pod runs in the hub's namespace: a Secret name from another namespace would
    # resolve to an unrelated Secret there (courses.pull_secret_rule; the status says why).
    pull_secret = (
        None if pull_secret_rule(hub, course) or not s.image_pull_secret_ref else s.image_pull_secret_ref.name
    )
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
        "imagePullSecret": pull_secret,
    }


def allowlist_document(hub: HubRecord, winners: dict[str, CourseRecord], published: dict[str, str]) -> dict:
    courses = {slug: course_entry(hub, winners[slug], image) for slug, image in sorted(published.items())}
    default = hub.spec.courses.default.lower() if hub.spec.courses and hub.spec.courses.default else None
    return {
        "version": 1,
        "hub": hub.name,
        "default": default if default in courses else None,
        "onUnknown": unknown_course_policy(hub),
        "gpu": gpu_settings(hub),
        "limits": limits_settings(hub),
        "courses": courses,
    }


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


def serialize(doc: dict) -> str:
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


# -- sharding (docs/CONTRACTS.md) ------------------------------------------------------
# A ConfigMap holds at most 1 MiB of data. An allowlist that fits stays inline in the one
# ConfigMap (one write per change); a larger one is split into content-addressed shard
# ConfigMaps that the index ConfigMap lists, so 10,000 courses with maximum-length fields
# still publish. Shards are keyed by a hash of the slug, so one course change rewrites one
# shard, not all of them.
SHARD_PREFIX = f"{ALLOWLIST_CONFIGMAP}-"
SHARD_KEY = "courses.json"
SHARD_LABEL = "coursehub.dev/allowlist-shard"
# Bytes of JSON per ConfigMap: 1 MiB is the API server's limit for the whole object, and
# metadata (labels, owner reference, managedFields) needs room beside the data.
CONFIGMAP_BUDGET = 900_000
MAX_SHARDS = 256


class AllowlistTooLarge(Exception):
    """The allowlist does not fit even in MAX_SHARDS shards."""


def _bucket(slug: str, n: int) -> int:
    return int(hashlib.sha256(slug.encode()).hexdigest(), 16) % n


def shard_name(text: str) -> str:
    return SHARD_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:20]


def allowlist_objects(hub: HubRecord, doc: dict) -> tuple[dict, list[dict]]:
    """(index ConfigMap, shard ConfigMaps) for `doc`; write the shards first, then the index.

    Raises AllowlistTooLarge when even MAX_SHARDS shards cannot hold it.
    """
    text = serialize(doc)
    if len(text.encode()) <= CONFIGMAP_BUDGET:
        return allowlist_configmap(hub, doc), []
    courses = doc.get("courses") or {}
    n = 2
    while n <= MAX_SHARDS:
        buckets: list[dict] = [{} for _ in range(n)]
        for slug, entry in courses.items():
            buckets[_bucket(slug, n)][slug] = entry
        texts = [serialize({"courses": b}) for b in buckets if b]
        if all(len(t.encode()) <= CONFIGMAP_BUDGET for t in texts):
            break
        n *= 2
    else:
        raise AllowlistTooLarge(
            f"the allowlist of {len(courses)} courses needs more than {MAX_SHARDS} ConfigMaps of "
            f"{CONFIGMAP_BUDGET} bytes"
        )
    shards: list[dict] = []
    for t in texts:
        shards.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": shard_name(t),
                    "namespace": hub.namespace,
                    "labels": {**hub_labels(hub), SHARD_LABEL: "true"},
                },
                "data": {SHARD_KEY: t},
                # Content-addressed: a shard never changes, it is replaced by another name.
                "immutable": True,
            }
        )
    index = {k: v for k, v in doc.items() if k != "courses"}
    index["version"] = 2
    index["shards"] = [shard_name(t) for t in texts]
    return allowlist_configmap(hub, index), shards


def index_shards(configmap: dict | None) -> list[str]:
    """The shard ConfigMaps an index ConfigMap lists (none for an inline allowlist)."""
    try:
        doc = json.loads(((configmap or {}).get("data") or {}).get(ALLOWLIST_KEY, "{}"))
        shards = doc.get("shards") or []
        return [s for s in shards if isinstance(s, str) and s.startswith(SHARD_PREFIX)]
    except (ValueError, TypeError, AttributeError):
        return []


def shard_images(configmap: dict | None) -> dict[str, str]:
    """slug -> image from one shard ConfigMap (empty when absent or unreadable)."""
    try:
        doc = json.loads(((configmap or {}).get("data") or {}).get(SHARD_KEY, "{}"))
        return {slug: entry["image"] for slug, entry in (doc.get("courses") or {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def live_published(index: dict | None, shards: dict[str, dict | None]) -> dict[str, str]:
    """slug -> image from the live index ConfigMap and its shards (name -> ConfigMap or None)."""
    names = index_shards(index)
    if not names:
        return previously_published(index)
    out: dict[str, str] = {}
    for name in names:
        out.update(shard_images(shards.get(name)))
    return out
