"""Pure: the pre-puller DaemonSets of a hub, their NetworkPolicy, and whether they hold an image.

The technique z2jh uses, owned by coursehub instead of Helm so that a course change never
becomes a values change (which would restart the hub): one init container per image, then a
pause container keeps the pod Ready; Ready means every image is on the node.

Unlike z2jh's puller, nothing a course image ships ever runs (docs/prepull.md):
- a trusted init container from the operator's own image copies a static no-op program
  (images/noop/noop.c, /usr/local/bin/coursehub-noop in that image) into an emptyDir;
- every other init container (course images, z2jh's network-tools) runs that program from the
  emptyDir, never the image's entrypoint or shell, so images without a shell pull too;
- every container runs as 65534 with no privilege escalation, no capabilities, a read-only
  root filesystem and the RuntimeDefault seccomp profile; the pod has no service account
  token and a NetworkPolicy denies all of its traffic (the kubelet pulls, not the pod);
- pods go only where learner pods go: the hub's singleuser node selector, required node
  affinity and tolerations (z2jh's scheduling.userPods too), plus the GPU settings for the
  GPU puller;
- pull secrets come only from CourseImages in the hub's own namespace (see
  courses.pull_secret_rule).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .allowlist import gpu_settings, hub_labels

# pull_secret_rule lives with the records: the allowlist applies it too, and importing this
# module from allowlist.py would be circular.
from .courses import CourseRecord, HubRecord, pull_secret_rule
from .values import Z2JH_VERSION, helm_coalesce, z2jh_defaults

# Each kind of puller is one DaemonSet per chunk of at most `images_max` course images: the
# first chunk keeps the kind's own name, the next ones add "-1", "-2"... (chunk_name).
GENERAL = "coursehub-puller"
GPU = "coursehub-puller-gpu"
# Settings.puller_images_max's default. A puller pod carries ~0.6 KB of spec and a status entry
# per image, every write of it costs the API server ~1.2 ms per image, and etcd refuses an
# object over 1.5 MiB: one DaemonSet for every course of a 2,000-course hub would be refused.
PULLER_IMAGES_MAX = 250
NETWORK_POLICY = "coursehub-puller-deny-all"
APP_LABEL = {"app.kubernetes.io/name": "coursehub-puller"}

# Where the operator image (Dockerfile) keeps the static no-op, and where pullers mount it.
NOOP_IN_OPERATOR_IMAGE = "/usr/local/bin/coursehub-noop"
NOOP_VOLUME = "coursehub-noop"
NOOP_MOUNT = "/coursehub-noop"
NOOP = f"{NOOP_MOUNT}/noop"
INSTALL_CONTAINER = "install-noop"
NETWORK_TOOLS_CONTAINER = "network-tools"
COURSE_CONTAINER_PREFIX = "pull-"
# The chart passes the operator's own image (COURSEHUB_OPERATOR_IMAGE); this is the chart's default.
DEFAULT_OPERATOR_IMAGE = "ghcr.io/coursehub/coursehub-operator:0.1.0"
NOBODY = 65534

# z2jh's hub puts the block-cloud-metadata container (network-tools) in every learner pod
# when singleuser.cloudMetadata.blockWithIptables is true; its chart fills the tag in at
# packaging time, so the defaults file carries this placeholder instead of a tag.
_CHARTPRESS_PLACEHOLDER = "set-by-chartpress"
_NODE_PURPOSE_TERM = {
    "matchExpressions": [{"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}]
}

# Small on purpose: the containers exit at once (cp, the no-op) or sleep (pause).
RESOURCES = {"requests": {"cpu": "1m", "memory": "8Mi"}, "limits": {"cpu": "50m", "memory": "32Mi"}}
NOOP_SIZE_LIMIT = "8Mi"  # the static no-op is under 1 MiB


def container_security_context() -> dict:
    """What only a container can say. Who it runs as and its seccomp profile are the pod's
    (pod_security_context), which every container inherits: a puller has one container per
    course, and repeating them in each made a 1,000-course puller pod 19% larger (every
    write of it, and of the pods it rolls out, costs the API server by size; etcd refuses an
    object over 1.5 MiB)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }


def pod_security_context() -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": NOBODY,
        "runAsGroup": NOBODY,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_name(slug: str) -> str:
    """A DNS label for a slug's init container, unique per slug.

    Sanitising alone collides ('a.b' and 'a_b' both become 'a-b'), so a hash of the exact
    (lower-cased) slug is appended. The 'pull-' prefix keeps course containers apart from
    the puller's own (install-noop, network-tools).
    """
    slug = slug.lower()
    base = re.sub(r"[^a-z0-9]+", "-", slug).strip("-")[:48].rstrip("-") or "course"
    digest = hashlib.sha256(slug.encode()).hexdigest()[:8]
    return f"{COURSE_CONTAINER_PREFIX}{base}-{digest}"


# --- where learner pods go --------------------------------------------------------------


class Unplaceable(ValueError):
    """The hub's values leave no well-formed placement for learner pods; `path` names the key."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True)
class Placement:
    """The scheduling constraints of a learner pod, as KubeSpawner builds them from z2jh values."""

    node_selector: dict[str, str] = field(default_factory=dict)
    # Required NodeSelectorTerms (ORed by Kubernetes); empty: no required node affinity.
    required_terms: list[dict] = field(default_factory=list)
    tolerations: list[dict] = field(default_factory=list)

    def pod_fields(self) -> dict:
        out: dict[str, Any] = {"tolerations": copy.deepcopy(self.tolerations)}
        if self.node_selector:
            out["nodeSelector"] = dict(self.node_selector)
        if self.required_terms:
            out["affinity"] = {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": copy.deepcopy(self.required_terms)
                    }
                }
            }
        return out


def hub_values(hub: HubRecord) -> dict:
    """z2jh's defaults with the hub's spec.values over them: what the chart and hub config see.

    The operator's own rendered values set nothing about scheduling or network-tools, so
    spec.values over the defaults is enough here, and this never fails on other spec errors.
    """
    return helm_coalesce(z2jh_defaults(), hub.spec.values or {})


def _at(values: dict, path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _list_of_dicts(values: dict, path: str) -> list[dict]:
    v = _at(values, path)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise Unplaceable(f"spec.values.{path}", "must be a list of objects")
    return [copy.deepcopy(x) for x in v]


def learner_placement(hub: HubRecord, *, gpu: bool = False) -> Placement:
    """Where the hub's learner pods (GPU ones with gpu=True) may run.

    Mirrors z2jh 4.4's hub config and KubeSpawner: singleuser.nodeSelector;
    scheduling.userPods.tolerations + singleuser.extraTolerations; required node affinity
    from matchNodePurpose=require and singleuser.extraNodeAffinity.required; for GPU pods
    the course_spawner adds the GPU label to every required term (AND) and the GPU
    toleration. Raises Unplaceable when the values are malformed or GPU pods fit nowhere.
    """
    v = hub_values(hub)
    selector = _at(v, "singleuser.nodeSelector") or {}
    if not isinstance(selector, dict) or not all(
        isinstance(k, str) and isinstance(x, str) for k, x in selector.items()
    ):
        raise Unplaceable("spec.values.singleuser.nodeSelector", "must map label names to strings")
    tolerations = _list_of_dicts(v, "scheduling.userPods.tolerations") + _list_of_dicts(
        v, "singleuser.extraTolerations"
    )
    terms = _list_of_dicts(v, "singleuser.extraNodeAffinity.required")
    purpose = _at(v, "scheduling.userPods.nodeAffinity.matchNodePurpose")
    if purpose == "require":
        terms.append(copy.deepcopy(_NODE_PURPOSE_TERM))
    if gpu:
        g = gpu_settings(hub)
        if g is None:
            raise Unplaceable("spec.singleuser.gpuNodes", "is not set, so GPU courses fit on no node")
        # The same nodes as the learner pod's "every term AND the GPU label": the label as a
        # node selector, ANDed into every term as the course_spawner does.
        exprs = [{"key": k, "operator": "In", "values": [x]} for k, x in sorted(g["nodeSelector"].items())]
        for t in terms:
            t["matchExpressions"] = list(t.get("matchExpressions") or []) + exprs
        for t in g["tolerations"]:
            if t not in tolerations:
                tolerations.append(t)
        for k, x in g["nodeSelector"].items():
            if k in selector and selector[k] != x:
                raise Unplaceable(
                    "spec.values.singleuser.nodeSelector",
                    f"requires {k}={selector[k]} while spec.singleuser.gpuNodes requires {k}={x}: "
                    "GPU courses fit on no node",
                )
        selector = {**selector, **g["nodeSelector"]}
    return Placement(node_selector=dict(selector), required_terms=terms, tolerations=tolerations)


def network_tools_image(hub: HubRecord) -> str | None:
    """The image of z2jh's block-cloud-metadata init container, or None when learner pods have none.

    The name and tag come from the hub's values (singleuser.networkTools.image) over the
    chart's defaults; the packaged chart's tag is its own version, so the defaults' placeholder
    becomes spec.chart.version (or the z2jh version coursehub is built against).
    """
    v = hub_values(hub)
    if _at(v, "singleuser.cloudMetadata.blockWithIptables") is not True:
        return None
    name = _at(v, "singleuser.networkTools.image.name")
    tag = _at(v, "singleuser.networkTools.image.tag")
    if not isinstance(name, str) or not name:
        return None
    if not isinstance(tag, str) or not tag or tag == _CHARTPRESS_PLACEHOLDER:
        tag = hub.spec.chart.version or Z2JH_VERSION
    return f"{name}:{tag}"


# --- which courses go into which puller ------------------------------------------------


@dataclass
class PullerPlan:
    """kind of puller -> {slug: image}; slug -> why it is in no puller; kind -> where it goes."""

    images: dict[str, dict[str, str]]
    left_out: dict[str, str]
    placements: dict[str, Placement]


def plan_pullers(hub: HubRecord, winners: dict[str, CourseRecord]) -> PullerPlan:
    images: dict[str, dict[str, str]] = {GENERAL: {}, GPU: {}}
    left_out: dict[str, str] = {}
    placements: dict[str, Placement] = {}
    unplaceable: dict[str, str] = {}
    for name, gpu in ((GENERAL, False), (GPU, True)):
        try:
            placements[name] = learner_placement(hub, gpu=gpu)
        except Unplaceable as e:
            unplaceable[name] = str(e)
    for slug, c in sorted(winners.items()):
        if not c.spec.pre_pull or not c.resolved_image:
            continue
        why = pull_secret_rule(hub, c)
        if why:
            left_out[slug] = why
            continue
        wanted = {"none": [GENERAL], "optional": [GENERAL, GPU], "required": [GPU]}[c.spec.gpu]
        # An optional-GPU course runs on either kind of node: pull it wherever a puller can go.
        targets = [n for n in wanted if n in placements]
        if not targets:
            reasons = "; ".join(unplaceable[n] for n in wanted)
            left_out[slug] = f"not pre-pulled: learner pods of this course fit on no node ({reasons})"
            continue
        for n in targets:
            images[n][slug] = c.resolved_image
    return PullerPlan(images, left_out, placements)


def puller_images(winners: dict[str, CourseRecord], hub: HubRecord) -> dict[str, dict[str, str]]:
    """Kind of puller (GENERAL, GPU) -> {slug: image}: GPU-only courses on GPU nodes, others
    where user pods go."""
    return plan_pullers(hub, winners).images


# --- chunks: one DaemonSet per few hundred images ----------------------------------------

_CHUNK_NAME = re.compile(rf"^({re.escape(GENERAL)}|{re.escape(GPU)})(?:-([1-9][0-9]*))?$")


def chunk_name(kind: str, index: int) -> str:
    return kind if index == 0 else f"{kind}-{index}"


def chunk_of(name: str) -> tuple[str, int] | None:
    """(kind, index) of a puller DaemonSet's name; None for any other name."""
    m = _CHUNK_NAME.match(name)
    return (m.group(1), int(m.group(2) or 0)) if m else None


def kind_of(name: str) -> str | None:
    """GENERAL or GPU for a puller DaemonSet's name; None for any other name."""
    parsed = chunk_of(name)
    return parsed[0] if parsed else None


def puller_selector(hub: HubRecord) -> str:
    """The label selector of every puller DaemonSet of a hub (all chunks of both kinds)."""
    return ",".join(f"{k}={v}" for k, v in sorted({**hub_labels(hub), **APP_LABEL}.items()))


def _course_init_containers(ds: dict | None) -> list[dict]:
    """A puller's course init containers (its own install-noop and network-tools are not courses)."""
    if not ds:
        return []
    return [
        c
        for c in ds["spec"]["template"]["spec"].get("initContainers", [])
        if c["name"].startswith(COURSE_CONTAINER_PREFIX)
    ]


def course_containers(ds: dict | None) -> list[str]:
    """Names of a puller's course init containers."""
    return [c["name"] for c in _course_init_containers(ds)]


def assign_chunks(
    kind: str, images: Mapping[str, str], live: Mapping[str, dict | None], images_max: int
) -> dict[str, dict[str, str]]:
    """Chunk name -> {slug: image} for one kind of puller.

    Stable, so that a change rolls out one chunk, not all of them: a course stays in the live
    chunk that holds it (its image may change there); new courses fill the lowest chunks with
    room, then open the next one. In a burst, a chunk that fills up is written at once while
    the last, partial one waits for the burst's end (held_pullers). Chunks are packed afresh
    only when one holds more than `images_max` (the setting was lowered, or the hub comes from
    a version with one DaemonSet per kind) or deletions left more than twice as many chunks as
    the courses need.
    """
    if not images:
        return {}
    slug_of = {container_name(s): s for s in images}
    chunks: dict[int, dict[str, str]] = {}
    for name, ds in sorted(live.items()):
        parsed = chunk_of(name)
        if ds is None or parsed is None or parsed[0] != kind:
            continue
        for container in course_containers(ds):
            slug = slug_of.get(container)
            if slug is not None and all(slug not in c for c in chunks.values()):
                chunks.setdefault(parsed[1], {})[slug] = images[slug]
    needed = -(-len(images) // images_max)
    if any(len(c) > images_max for c in chunks.values()) or len(chunks) > 2 * needed:
        chunks = {}
    placed = {s for c in chunks.values() for s in c}
    index = 0
    for slug in sorted(s for s in images if s not in placed):
        while len(chunks.get(index, ())) >= images_max:
            index += 1
        chunks.setdefault(index, {})[slug] = images[slug]
    return {chunk_name(kind, i): chunk for i, chunk in sorted(chunks.items())}


def unpulled_reasons(hub: HubRecord, winners: dict[str, CourseRecord]) -> dict[str, str]:
    """slug -> why a course that asks to be pre-pulled is in none of this hub's pullers.

    For the course's own status (instead of "rolling out" forever); empty when pre-pulling is off.
    """
    enabled = hub.spec.pre_pull.enabled if hub.spec.pre_pull else True
    return plan_pullers(hub, winners).left_out if enabled else {}


# --- the objects ----------------------------------------------------------------------


def _container(name: str, image: str, **extra: Any) -> dict:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": copy.deepcopy(RESOURCES),
        "securityContext": container_security_context(),
        **extra,
    }


def _noop_runner(name: str, image: str) -> dict:
    """An init container that pulls `image` and runs only the trusted no-op from the emptyDir."""
    return _container(
        name,
        image,
        # command replaces the image's entrypoint and, without args, its cmd: nothing of the image runs.
        command=[NOOP],
        # Our own directory, not the image's WORKDIR (which may be missing on a read-only root).
        workingDir=NOOP_MOUNT,
        volumeMounts=[{"name": NOOP_VOLUME, "mountPath": NOOP_MOUNT, "readOnly": True}],
    )


def puller_daemonset(
    hub: HubRecord,
    name: str,
    images: dict[str, str],
    *,
    pull_secrets: list[str] | set[str],
    placement: Placement,
    operator_image: str = DEFAULT_OPERATOR_IMAGE,
    network_tools: str | None = None,
) -> dict:
    pause = hub.spec.pre_pull.pause_image if hub.spec.pre_pull else "registry.k8s.io/pause:3.10"
    selector = {**APP_LABEL, "coursehub.dev/puller": name}
    install = _container(
        INSTALL_CONTAINER,
        operator_image,
        # cp from the operator's own image: the one trusted program that writes the emptyDir.
        command=["cp", NOOP_IN_OPERATOR_IMAGE, NOOP],
        volumeMounts=[{"name": NOOP_VOLUME, "mountPath": NOOP_MOUNT}],
    )
    init = [install]
    if network_tools:
        init.append(_noop_runner(NETWORK_TOOLS_CONTAINER, network_tools))
    init += [_noop_runner(container_name(slug), image) for slug, image in sorted(images.items())]
    pod_spec: dict = {
        "initContainers": init,
        "containers": [_container("pause", pause)],
        "volumes": [{"name": NOOP_VOLUME, "emptyDir": {"sizeLimit": NOOP_SIZE_LIMIT}}],
        "securityContext": pod_security_context(),
        **placement.pod_fields(),
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
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


def desired_pullers(
    hub: HubRecord,
    winners: dict[str, CourseRecord],
    *,
    operator_image: str = DEFAULT_OPERATOR_IMAGE,
    live: Mapping[str, dict | None] | None = None,
    images_max: int = PULLER_IMAGES_MAX,
) -> dict[str, dict | None]:
    """DaemonSet name -> manifest, or None when it should not exist (each kind's first chunk
    and every live chunk are named, so that unwanted ones are pruned).

    `operator_image` is the operator's own image (settings.operator_image): the source of
    the trusted no-op. `live`: the pullers as they are (name -> DaemonSet or None), so that
    courses stay in their chunks (assign_chunks).
    """
    live = live or {}
    enabled = hub.spec.pre_pull.enabled if hub.spec.pre_pull else True
    out: dict[str, dict | None] = {GENERAL: None, GPU: None}
    out.update({name: None for name in live if chunk_of(name)})
    if not enabled:
        return out
    plan = plan_pullers(hub, winners)
    tools = network_tools_image(hub)
    for kind, images in plan.images.items():
        if not images or kind not in plan.placements:
            continue
        for name, chunk in assign_chunks(kind, images, live, images_max).items():
            refs = (winners[slug].spec.image_pull_secret_ref for slug in chunk)
            out[name] = puller_daemonset(
                hub,
                name,
                chunk,
                # only the secrets of this chunk's courses (pull_secret_rule vetted them)
                pull_secrets={r.name for r in refs if r is not None},
                placement=plan.placements[kind],
                operator_image=operator_image,
                network_tools=tools,
            )
    return out


def puller_network_policies(hub: HubRecord) -> list[dict]:
    """NetworkPolicies for the puller pods (applied with the pullers, owned by the hub).

    Deny all: images are pulled by the kubelet and the container runtime on the node, not
    from the pod's network, so a puller pod needs no traffic at all.
    """
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": NETWORK_POLICY, "namespace": hub.namespace, "labels": hub_labels(hub)},
            "spec": {
                "podSelector": {"matchLabels": dict(APP_LABEL)},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": [],
            },
        }
    ]


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
    """The course images a puller holds."""
    return {c["image"] for c in _course_init_containers(ds)}


# puller name -> (its desiredNumberScheduled, the images known to be on each of those nodes)
PulledOn = Mapping[str, tuple[int, frozenset[str]]]


def known_pulled(earlier: PulledOn, live: Mapping[str, dict | None]) -> dict[str, tuple[int, frozenset[str]]]:
    """What each live puller is known to have pulled: every image of its live spec once it is
    fully rolled out; while it rolls out again, the images known before that it still holds,
    as long as it runs on as many nodes (a rollout that adds images does not take the old
    ones off the nodes, so their courses stay PrePulled instead of flapping to Pulling; a new
    node has pulled nothing yet, so a changed node count forgets them)."""
    out: dict[str, tuple[int, frozenset[str]]] = {}
    for name, ds in live.items():
        if not ds:
            continue
        nodes = (ds.get("status") or {}).get("desiredNumberScheduled", 0)
        held = frozenset(images_of(ds))
        if rolled_out(ds):
            out[name] = (nodes, held)
        elif name in earlier and earlier[name][0] == nodes:
            out[name] = (nodes, earlier[name][1] & held)
    return out


def pulled_images(desired: Mapping[str, dict | None], known: PulledOn) -> set[str]:
    """Images on every node they belong on: each DaemonSet meant to hold the image has it
    pulled (`known`, from `known_pulled`; an optional-GPU course needs both pullers)."""
    wanted: dict[str, set[str]] = {}
    for name, ds in desired.items():
        for image in images_of(ds):
            wanted.setdefault(image, set()).add(name)
    return {
        image
        for image, names in wanted.items()
        if all(image in known.get(n, (0, frozenset()))[1] for n in names)
    }


def held_pullers(
    desired: Mapping[str, dict | None],
    live: Mapping[str, dict | None],
    *,
    burst: bool,
    held_for: float | None,
    hold_max: float,
    images_max: int = PULLER_IMAGES_MAX,
) -> set[str]:
    """Pullers whose new image list waits for the end of a burst (their live spec stays).

    Each write of a puller with N course images costs the API server about 1.2 ms per image
    and rolls an N-container pod onto every node again (bench_apiserver_writes.py: ~1.2 s of
    CPU at 1,000 images), so rewriting it on every round of a burst (7 times for 1,000 courses)
    made the pullers most of the burst's cost. While changes keep coming (`burst`: they came
    during the previous round and still came when the round's wait ended,
    hub_round.changes_still_coming), a puller that exists keeps its live images; the first
    round after the burst writes every image at once. `held_for` (seconds since a puller was first
    held, None: none is) bounds it: a stream of changes still reaches the nodes every
    `hold_max` seconds. A puller to remove, or one whose images are unchanged, is never held;
    nor is a full chunk (`images_max` courses): the burst adds nothing more to it
    (assign_chunks), so it rolls out while the burst goes on and only the last chunk waits.
    A chunk to create waits too when a chunk of its kind is live (else the hub's first
    pull would wait for the burst's end); without that, each chunk of a 1,000-course burst
    was created part full, then written again full: two rollouts."""
    if not burst or hold_max <= 0 or (held_for is not None and held_for >= hold_max):
        return set()
    live_kinds = {kind_of(name) for name, ds in live.items() if ds} - {None}
    # A kind that loses a chunk (packed afresh) holds nothing: the chunks taking over its
    # courses must be written in the round that deletes it, or those courses are in no puller.
    shrinking = {kind_of(name) for name, ds in desired.items() if ds is None and live.get(name)} - {None}
    return {
        name
        for name, ds in desired.items()
        if ds is not None
        and len(course_containers(ds)) < images_max
        and images_of(ds) != images_of(live.get(name))
        and (live.get(name) is not None or kind_of(name) in live_kinds)
        and kind_of(name) not in shrinking
    }
