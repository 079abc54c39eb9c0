"""Pure: one hub round, from everything observed to everything to write.

The hub reconciler reads first (the live allowlist and its shards, the pullers, the
referenced Secrets, what Helm last reported), calls `plan_round` once, and then writes the
steps it returns, each on its own: a step that fails is folded into the hub's status by
`fold_failures` and never stops the others (issue 12, item 8).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..conditions import Cond
from . import allowlist as allowlist_mod
from . import puller as puller_mod
from . import tenancy
from .courses import CourseRecord, HubRecord, namespace_owner, pull_secret_rule, select_courses
from .gateway import gateway_objects
from .policy import ChartPolicy, InvalidChart, check_chart
from .secrets import (
    check_secrets,
    gateway_secret_names,
    hub_secret_names,
    required_secret_keys,
    version_stamp,
)
from .status import Publication, hub_ready
from .values import InvalidValues, hub_allowlist_rbac, render_values, validate_values

# Helm failures that the same chart and values would repeat: never retried by themselves
# (a retry would only add a revision: install/upgrade, then rollback). The one home of this
# set: coursehub.helm classifies helm's errors into these reasons and imports it from here.
# Forbidden: the chart renders something the hub's tenant identity may not create (another
# namespace, a cluster-scoped kind), which no retry changes.
DETERMINISTIC_RELEASE_REASONS = frozenset(
    {"ValuesRejected", "ChartRenderFailed", "ResourceInvalid", "Forbidden"}
)
# A transient Helm failure (cluster unreachable, timeout) is retried after this long.
RELEASE_RETRY_SECONDS = 30.0

Ident = tuple[str, str]  # (kind, name) of an object in the hub's namespace


def fingerprint(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ReleaseResult:
    """What the last Helm run for one values+chart fingerprint reported."""

    fingerprint: str
    ok: bool
    reason: str = ""
    message: str = ""
    revision: int | None = None
    chart_version: str = ""
    changed: bool = False  # it installed or upgraded (an Event says so once)
    age: float = 0.0  # seconds since it finished


@dataclass(frozen=True)
class Observed:
    """Everything a hub round reads before it decides."""

    hub: HubRecord
    hubs: tuple[HubRecord, ...]
    courses: tuple[CourseRecord, ...]
    namespace_labels: Mapping[str, Mapping[str, str]]
    status: Mapping  # the hub's status as last written
    live_allowlist: Mapping[str, str] = field(default_factory=dict)  # slug -> image learners get now
    live_index: dict | None = None  # the live coursehub-allowlist ConfigMap
    live_pullers: Mapping[str, dict | None] = field(default_factory=dict)
    # what the pullers were known to have pulled at the last round (Plan.pulled_on)
    pulled_before: puller_mod.PulledOn = field(default_factory=dict)
    # changes came in during the previous round and still come (a burst, changes_still_coming):
    # pullers that exist wait for its end
    burst: bool = False
    puller_held_for: float | None = None  # seconds since a puller was first held back (None: none is)
    puller_hold_max: float = 10.0  # never hold one longer (Settings.puller_hold_max)
    puller_images_max: int = puller_mod.PULLER_IMAGES_MAX  # course images per puller DaemonSet
    secrets: Mapping[str, dict | None] = field(default_factory=dict)  # referenced Secret objects
    owned: frozenset[Ident] = frozenset()  # objects of this hub known to exist (pruned if unwanted)
    deployed_fingerprint: str | None = None  # values+chart this process knows to be deployed
    release: ReleaseResult | None = None  # Helm's last report, if any
    release_running: bool = False
    operator_image: str | None = None  # the trusted no-op in the pullers comes from it
    chart_policy: ChartPolicy = field(default_factory=ChartPolicy)
    tenant_service_account: str = tenancy.DEFAULT_SERVICE_ACCOUNT
    tenant_cluster_role: str = tenancy.DEFAULT_CLUSTER_ROLE


@dataclass(frozen=True)
class Step:
    """Objects to apply together, in order; `needs_all` steps run only if earlier ones did."""

    name: str
    apply: tuple[dict, ...] = ()
    delete: tuple[Ident, ...] = ()


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    # None: leave every course's publication by this hub as it is (nothing was decided).
    publications: dict[tuple[str, str], Publication] | None = None
    conditions: list[Cond] = field(default_factory=list)  # without Ready
    courses: int = 0
    release: dict | None = None  # status.release
    # (fingerprint, chart, values, the user Helm impersonates) when Helm must run
    run_release: tuple[str, object, dict, str] | None = None
    deployed_fingerprint: str | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    pulling: bool = False  # pullers still rolling out: look again soon
    published: dict[str, str] = field(default_factory=dict)  # slug -> image in the allowlist
    # what the live pullers are known to have pulled (the next round's Observed.pulled_before)
    pulled_on: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)
    # pullers whose new images wait for the end of a burst (desired.puller.held_pullers)
    pullers_held: frozenset[str] = frozenset()


def plan_round(o: Observed) -> Plan:
    hub = o.hub
    owner = namespace_owner(o.hubs, hub.namespace)
    if owner.key != hub.key:
        # Nothing in the namespace is this hub's; it publishes nothing.
        return Plan(
            publications={},
            conditions=[
                Cond(
                    "ReleaseDeployed",
                    False,
                    "NamespaceTaken",
                    f"JupyterHubDeployment {owner.name} already owns namespace {hub.namespace}; z2jh's "
                    f"object names are not release-prefixed, so only one hub fits a namespace: move this "
                    f"one to its own namespace",
                )
            ],
            release=None,
        )
    plan = Plan()
    plan.steps.append(
        Step(
            "tenancy",
            tuple(
                tenancy.tenant_objects(
                    hub, service_account=o.tenant_service_account, cluster_role=o.tenant_cluster_role
                )
            ),
        )
    )
    _plan_courses(o, plan)
    secret_conds, secrets_ok = _secret_conditions(o)
    plan.conditions += secret_conds
    keep: set[Ident] = set()
    try:
        gateway = gateway_objects(
            hub.name,
            hub.namespace,
            hub.spec,
            hub.spec.domain,
            secret_version=version_stamp(gateway_secret_names(hub.spec), dict(o.secrets)),
        )
    except InvalidValues as e:
        gateway = None
        plan.conditions = [
            Cond(
                "GatewayReady", False, "InvalidValues", f"{e.path}: {e.message}; the gateway was not touched"
            )
            if c.type == "GatewayReady"
            else c
            for c in plan.conditions
        ]
    if secrets_ok and gateway is not None:
        plan.steps.append(Step("gateway", tuple(gateway)))
    else:
        # The condition explains it; what runs keeps running.
        keep = {i for i in o.owned if i[1].startswith("coursehub-gateway")}
    plan.conditions.insert(0, _plan_release(o, plan, secrets_ok))
    _plan_prune(o, plan, keep)
    return plan


# -- courses -------------------------------------------------------------------
def _plan_courses(o: Observed, plan: Plan) -> None:
    hub = o.hub
    selection = select_courses(hub, list(o.courses), {k: dict(v) for k, v in o.namespace_labels.items()})
    winners = selection.winners
    extra = {"operator_image": o.operator_image} if o.operator_image else {}
    pullers = puller_mod.desired_pullers(
        hub, winners, live=o.live_pullers, images_max=o.puller_images_max, **extra
    )
    unpulled = puller_mod.unpulled_reasons(hub, winners)
    plan.pulled_on = puller_mod.known_pulled(o.pulled_before, o.live_pullers)
    pulled = puller_mod.pulled_images(pullers, plan.pulled_on)
    publish_after_pull = bool(hub.spec.pre_pull and hub.spec.pre_pull.publish_after_pull)
    published = allowlist_mod.published_images(
        winners, publish_after_pull=publish_after_pull, pulled=pulled, previous=dict(o.live_allowlist)
    )
    full: set[str] = set()
    try:
        index, shards = allowlist_mod.allowlist_objects(
            hub, allowlist_mod.allowlist_document(hub, winners, published)
        )
    except allowlist_mod.AllowlistTooLarge as e:
        # Over capacity: what learners get now stays; only courses not yet offered wait.
        kept = {s: img for s, img in o.live_allowlist.items() if s in winners}
        full = {s for s in published if s not in kept}
        published = kept
        try:
            index, shards = allowlist_mod.allowlist_objects(
                hub, allowlist_mod.allowlist_document(hub, winners, published)
            )
        except allowlist_mod.AllowlistTooLarge:
            index, shards = None, []  # leave the live allowlist exactly as it is
        cond = Cond(
            "CoursesPublished",
            False,
            "AllowlistFull",
            f"{e}; {len(full)} courses wait, the {len(published)} already offered stay: publish fewer "
            f"courses on this hub (spec.courses.selector) or split them over two hubs",
        )
    else:
        dups = len(selection.duplicates)
        msg = f"{len(published)} courses published"
        if dups:
            msg += f"; {dups} CourseImages claim a slug already taken (DuplicateCourse)"
        cond = Cond("CoursesPublished", True, "Published", msg)
    if index is not None:
        shard_names = [s["metadata"]["name"] for s in shards]
        rbac = hub_allowlist_rbac(hub.name, hub.namespace, allowlist_mod.ALLOWLIST_CONFIGMAP)
        if shard_names:
            rbac = [_with_shard_access(obj, shard_names) for obj in rbac]
        # Shards before the Role that lets the hub read them, before the index naming them.
        plan.steps.append(Step("allowlist", (*shards, *rbac, index)))
    plan.published = published
    plan.courses = len(published)
    plan.conditions.append(cond)

    policies = puller_mod.puller_network_policies(hub) if any(pullers.values()) else []
    held = puller_mod.held_pullers(
        pullers,
        o.live_pullers,
        burst=o.burst,
        held_for=o.puller_held_for,
        hold_max=o.puller_hold_max,
        images_max=o.puller_images_max,
    )
    plan.pullers_held = frozenset(held)
    written = [m for name, m in pullers.items() if m and name not in held]
    plan.steps.append(Step("pullers", (*written, *policies)))
    wanted = set().union(*(puller_mod.images_of(m) for m in pullers.values() if m))
    plan.pulling = bool(wanted - pulled) or (
        publish_after_pull
        and any(c.resolved_image and c.resolved_image not in published.values() for c in winners.values())
    )
    plan.publications = _publications(hub, winners, selection.duplicates, published, pulled, full, unpulled)


def _with_shard_access(obj: dict, shard_names: list[str]) -> dict:
    """The hub's allowlist Role, plus `get` on exactly the shards the index lists."""
    if obj.get("kind") != "Role":
        return obj
    rule = {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": sorted(shard_names),
        "verbs": ["get"],
    }
    return {**obj, "rules": [*obj.get("rules", []), rule]}


def _publications(
    hub: HubRecord,
    winners: dict[str, CourseRecord],
    duplicates: dict[tuple[str, str], CourseRecord],
    published: dict[str, str],
    pulled: set[str],
    full: set[str],
    unpulled: Mapping[str, str],
) -> dict[tuple[str, str], Publication]:
    """How this hub treats each course it selects (the publication state machine)."""
    prepull_enabled = hub.spec.pre_pull.enabled if hub.spec.pre_pull else True
    no_gpu = allowlist_mod.gpu_settings(hub) is None
    pubs: dict[tuple[str, str], Publication] = {}
    for slug, course in winners.items():
        image = published.get(slug)
        if slug in full:
            state, msg = "AllowlistFull", "the hub's allowlist is full (see the hub's CoursesPublished)"
        elif image is None and course.resolved_image is None:
            state, msg = "NotResolved", "waiting for the image to resolve"
        elif course.spec.gpu == "required" and no_gpu:
            # It stays in the allowlist, so a launch link gets the hub's clear refusal.
            state, msg = (
                "NoGpuNodes",
                "the course needs a GPU and the hub has no spec.singleuser.gpuNodes: set them on the "
                "hub, or make the course's spec.gpu optional",
            )
        elif image is None:
            state, msg = "WaitingForPull", "publishAfterPull: offered once every node has pulled it"
        elif course.resolved_image is None:
            state, msg = "Published", "offering the digest published before, until the image resolves again"
        elif image != course.resolved_image:
            state, msg = "Published", "offering the previous digest until the new one is pulled"
        else:
            state, msg = "Published", "published"
        if not prepull_enabled or not course.spec.pre_pull:
            pre, pre_msg = "PrePullDisabled", ""
        elif slug in unpulled:
            # In no puller, so never "rolling out": the course says why in its own reason.
            pre, pre_msg = _unpulled_reason(hub, course, no_gpu), unpulled[slug]
        elif course.resolved_image in pulled:
            pre, pre_msg = "PrePulled", ""
        else:
            pre, pre_msg = "Pulling", "the pre-puller DaemonSet is rolling out"
        why = pull_secret_rule(hub, course)
        caveat = ("PullSecretElsewhere", why) if why and state == "Published" else None
        pubs[course.key] = Publication(hub.ref, hub.spec.domain, state, msg, image, pre, pre_msg, caveat)
    for loser_key, winner in duplicates.items():
        pubs[loser_key] = Publication(
            hub.ref,
            hub.spec.domain,
            "DuplicateCourse",
            f"course '{winner.slug}' is already published by the older CourseImage "
            f"{winner.namespace}/{winner.name}; rename spec.course or delete one",
        )
    return pubs


def _unpulled_reason(hub: HubRecord, course: CourseRecord, no_gpu: bool) -> str:
    if pull_secret_rule(hub, course):
        return "PullSecretElsewhere"
    if course.spec.gpu == "required" and no_gpu:
        return "NoGpuNodes"
    return "Unplaceable"


# -- secrets -------------------------------------------------------------------
def decoded(secret: dict | None) -> dict[str, bytes] | None:
    if secret is None:
        return None
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def _secret_conditions(o: Observed) -> tuple[list[Cond], bool]:
    required = required_secret_keys(o.hub.spec)
    results = check_secrets(required, {k: decoded(v) for k, v in o.secrets.items()})
    conds = []
    ok = True
    for ctype in ("DatabaseReady", "GatewayReady"):
        good, reason, message = results.get(ctype, (True, "NotRequired", "nothing to check"))
        conds.append(Cond(ctype, good, reason, message))
        ok = ok and good
    return conds, ok


# -- release -------------------------------------------------------------------
def required_secret_names(hub: HubRecord) -> list[str]:
    """Every Secret a round reads: the ones checked, and the ones whose version rolls a pod."""
    names = {name for pairs in required_secret_keys(hub.spec).values() for name, _ in pairs}
    return sorted(names | set(hub_secret_names(hub.spec)) | set(gateway_secret_names(hub.spec)))


def secret_versions(secrets: Mapping[str, dict | None]) -> dict[str, str | None]:
    """name -> resourceVersion (None: missing) of the Secrets a round read: a poll that finds
    other versions wakes the hub (rotation is noticed without a watch on Secrets)."""
    return {name: (obj or {}).get("metadata", {}).get("resourceVersion") for name, obj in secrets.items()}


def _release_event(o: Observed, reason: str, message: str) -> list[tuple[str, str, str]]:
    """A Warning once per reason and message (not again while ReleaseDeployed already says it)."""
    old = next((c for c in o.status.get("conditions") or [] if c.get("type") == "ReleaseDeployed"), None)
    if old and old.get("reason") == reason and str(old.get("message", "")).startswith(message[:80]):
        return []
    return [("Warning", reason, message)]


def _deployed(release: dict) -> Cond:
    return Cond(
        "ReleaseDeployed",
        True,
        "Deployed",
        f"revision {release.get('revision')} of chart {release.get('chartVersion')}",
    )


def _plan_release(o: Observed, plan: Plan, secrets_ok: bool) -> Cond:
    hub = o.hub
    status_release = dict(o.status.get("release") or {}) or None
    plan.release = status_release
    plan.deployed_fingerprint = o.deployed_fingerprint
    try:
        check_chart(hub.spec.chart, o.chart_policy)
    except InvalidChart as e:
        plan.events += _release_event(o, "InvalidChart", e.message)
        return Cond("ReleaseDeployed", False, "InvalidChart", f"{e.message}; the release was not touched")
    version = version_stamp(hub_secret_names(hub.spec), dict(o.secrets))
    try:
        values = render_values(
            hub.name,
            hub.namespace,
            hub.spec,
            secrets_version=version,
            allowlist_configmap=allowlist_mod.ALLOWLIST_CONFIGMAP,
        )
        validate_values(values)
    except InvalidValues as e:
        plan.events += _release_event(o, "InvalidValues", f"{e.path}: {e.message}")
        return Cond(
            "ReleaseDeployed", False, "InvalidValues", f"{e.path}: {e.message}; the release was not touched"
        )
    if not secrets_ok:
        return Cond(
            "ReleaseDeployed",
            False,
            "WaitingForSecrets",
            "the referenced Secrets are missing or incomplete (see DatabaseReady/GatewayReady); the "
            "release was not touched",
        )
    chart = hub.spec.chart
    want = fingerprint({"values": values, "chart": chart.to_wire()})
    if o.deployed_fingerprint == want and status_release:
        return _deployed(status_release)  # deployed by this process already: no Helm call at all
    done = o.release if o.release is not None and o.release.fingerprint == want else None
    if (
        done is not None
        and not done.ok
        and done.reason not in DETERMINISTIC_RELEASE_REASONS
        and done.age > RELEASE_RETRY_SECONDS
    ):
        done = None  # a transient failure: try again
    if done is not None and not done.ok:
        plan.events += _release_event(o, done.reason, done.message)
        return Cond(
            "ReleaseDeployed", False, done.reason, f"{done.message}; the previous release stays in place"
        )
    if done is not None:
        plan.deployed_fingerprint = want
        plan.release = {
            "name": hub.name,
            "revision": done.revision,
            "chartVersion": done.chart_version,
            "valuesHash": want,
        }
        if done.changed:
            plan.events.append(
                (
                    "Normal",
                    "ReleaseUpgraded",
                    f"helm release {hub.name} is at revision {done.revision} (chart {done.chart_version})",
                )
            )
        return _deployed(plan.release)
    if not o.release_running:
        # Helm runs beside the reconciler (an install waits for the hub's pods), so course
        # publication never waits for it; its result comes back in a later round.
        user = tenancy.helm_user(hub, o.tenant_service_account)
        plan.run_release = (want, chart, values, user)
    if status_release and status_release.get("valuesHash") == want:
        # This exact chart and values were deployed before (e.g. by the process before a
        # restart): keep saying so while Helm checks it, read-only, instead of flapping.
        return _deployed(status_release)
    return Cond(
        "ReleaseDeployed", False, "Progressing", f"helm is installing or upgrading release {hub.name}"
    )


# -- pruning -------------------------------------------------------------------
def _plan_prune(o: Observed, plan: Plan, keep: set[Ident]) -> None:
    """Owned objects no step wants any more go, after the steps (shards after their index)."""
    wanted = {(m["kind"], m["metadata"]["name"]) for s in plan.steps for m in s.apply}
    wanted |= {("DaemonSet", name) for name in plan.pullers_held}  # held, not unwanted
    allowlist_step = next((s for s in plan.steps if s.name == "allowlist"), None)
    if allowlist_step is None:
        # The allowlist is left as it is (over capacity): so are the shards its index lists.
        keep = keep | {("ConfigMap", n) for n in allowlist_mod.index_shards(o.live_index)}
        keep.add(("ConfigMap", allowlist_mod.ALLOWLIST_CONFIGMAP))
    gone = sorted(o.owned - wanted - keep)
    if gone:
        plan.steps.append(Step("prune", delete=tuple(gone)))


# -- when to run a round -----------------------------------------------------------
def round_delay(
    *, now: float, busy: bool, first_change: float, last_change: float, debounce: float, debounce_max: float
) -> float:
    """Seconds a woken hub waits before its round (0: at once).

    A change that finds the hub at rest is written at once: a lone change costs no quiet
    window. Changes that arrived while a round ran (`busy`) are the tail of a burst: they wait
    until none came for `debounce` seconds, but never past `debounce_max` after the first of
    them (`first_change`), so a burst becomes a handful of rounds and a stream of changes is
    still written every `debounce_max` seconds.
    """
    if not busy or debounce <= 0:
        return 0.0
    quiet_at = last_change + debounce
    cap_at = first_change + debounce_max
    return max(0.0, min(quiet_at, cap_at) - now)


def changes_still_coming(*, now: float, last_change: float, debounce: float) -> bool:
    """After round_delay's wait: whether it ended at its cap while changes kept coming (the
    round is inside a burst: pullers that would grow wait) rather than after a quiet window
    (the burst is over: this round writes them). Before this, the first round after a burst's
    quiet window still held the pullers, and they waited one more window (or a rollout's
    wake-up) for the round after it."""
    return debounce > 0 and now < last_change + debounce


# A burst is more than one course: a lone change that happened to arrive while a round ran
# (one the rollout of the previous change woke) is still written at once.
BURST_PULL_MIN_COURSES = 2


def published_pulling(pub: Publication | None) -> bool:
    """Offered by the hub, its image still being pre-pulled."""
    return pub is not None and pub.state == "Published" and pub.prepull == "Pulling"


def newly_pulling(
    before: Mapping[tuple[str, str], Publication | None], after: Mapping[tuple[str, str], Publication]
) -> int:
    """How many courses a round's publications (`after`, by course) start pulling: published
    and pulling now, and not with the same image before."""
    return sum(
        1
        for key, pub in after.items()
        if published_pulling(pub)
        and not (published_pulling(old := before.get(key)) and old is not None and old.image == pub.image)
    )


def burst_pull_deadline(
    *,
    now: float,
    previous: float | None,
    burst: bool,
    pullers_held: bool,
    pulling: bool,
    new_pulling: int,
    puller_hold_max: float,
    rollout_wait: float,
) -> float | None:
    """Until when (monotonic) the statuses of the courses a hub publishes and still pulls wait
    for the pull to finish, so that one write carries both "Published" and "PrePulled" (None:
    they do not wait).

    Only in a burst (changes came during the previous round, and this round starts pulling
    more than one course: `new_pulling`): a lone change's status is written at once and again
    once pulled. During a burst the puller waits for its end (desired.puller.held_pullers), at
    most `puller_hold_max`; the first round after it writes the puller, and from then on the
    statuses wait at most `rollout_wait` more for the rollout: on real nodes a large image may
    take minutes, and "Published" is worth writing first then. Each status write of a
    1,000-course burst costs the API server about as much as the course's create.
    """
    if not pulling:
        return None
    if previous is not None and previous <= now:
        previous = None  # over: a later burst on a hub still pulling (a node that cannot) holds anew
    if previous is None:
        if (burst or pullers_held) and new_pulling >= BURST_PULL_MIN_COURSES:
            return now + puller_hold_max + rollout_wait
        return None
    if burst or pullers_held:
        return previous
    return min(previous, now + rollout_wait)


def publication_current(hub: HubRecord, course: CourseRecord, pub: Publication | None) -> bool:
    """Whether `hub`'s last round already reflects what is known of `course` (its resolved
    image): if not, the course's status waits for that hub's due round, so one write carries
    both. A hub that offers the previous digest until the new one is pulled (publishAfterPull)
    is current as long as it says so."""
    if pub is None:
        return False
    if pub.state == "NotResolved":
        return course.resolved_image is None
    if pub.state != "Published" or pub.image == course.resolved_image:
        return True
    return bool(hub.spec.pre_pull and hub.spec.pre_pull.publish_after_pull)


# -- after the writes ------------------------------------------------------------
STEP_CONDITION = {
    "tenancy": "ReleaseDeployed",
    "allowlist": "CoursesPublished",
    "pullers": "CoursesPublished",
    "gateway": "GatewayReady",
    "prune": "CoursesPublished",
    "release": "ReleaseDeployed",
}


def skipped_steps(failed: Iterable[str]) -> set[str]:
    """Steps that must not run after `failed` ones: Helm needs its tenancy objects, shards are
    deleted only once the index that stopped listing them is written, and puller chunks only
    once the chunks that took over their courses are."""
    failed = set(failed)
    out = set()
    if "tenancy" in failed:
        out.add("release")
    if "allowlist" in failed:
        out.add("prune")
    if "pullers" in failed:
        # A chunk that failed to write may be taking over courses from chunks the prune would
        # delete: keep those until the pullers are written.
        out.add("prune")
    return out


def fold_failures(plan: Plan, failures: Mapping[str, str]) -> tuple[list[Cond], dict | None]:
    """The hub's conditions (with Ready) once the steps ran; `failures`: step -> error text.

    A failed step turns its condition False with reason ApplyFailed; the others keep theirs.
    Returns (conditions, publications to record or None to keep the previous ones).
    """
    conds = list(plan.conditions)
    for step, error in failures.items():
        ctype = STEP_CONDITION.get(step, "CoursesPublished")
        conds = [
            Cond(ctype, False, "ApplyFailed", f"writing the {step} objects failed: {error}; retrying")
            if c.type == ctype
            else c
            for c in conds
        ]
        if not any(c.type == ctype for c in conds):
            conds.append(Cond(ctype, False, "ApplyFailed", f"writing the {step} objects failed: {error}"))
    # Publications follow the allowlist actually written: if it failed, learners still get the old one.
    pubs = None if "allowlist" in failures else plan.publications
    return [hub_ready(conds), *conds], pubs
