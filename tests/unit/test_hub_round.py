"""The pure hub round: everything observed in, every object, publication and condition out."""

from __future__ import annotations

import base64
import json

import pytest

from coursehub.api.courseimage import CourseImageSpec
from coursehub.api.jupyterhubdeployment import JupyterHubDeploymentSpec
from coursehub.desired import allowlist as allowlist_mod
from coursehub.desired import puller as puller_mod
from coursehub.desired.courses import CourseRecord, HubRecord
from coursehub.desired.hub_round import (
    Observed,
    ReleaseResult,
    burst_pull_deadline,
    fingerprint,
    fold_failures,
    newly_pulling,
    plan_round,
    required_secret_names,
    skipped_steps,
)
from coursehub.desired.policy import ChartPolicy
from coursehub.desired.status import Publication, Resolution, course_status

CHART = {"repository": "https://hub.jupyter.org/helm-chart/", "name": "jupyterhub", "version": "4.4.1"}
NS = "jupyter"
RESOLVED = Resolution(1, True, "Resolved", "", "sha256:" + "a" * 64)


def hub(name="learn", created="2026-01-01T00:00:00Z", ns=NS, **spec) -> HubRecord:
    base = {
        "chart": CHART,
        "domain": f"{name}.example.edu",
        "database": {"type": "sqlite-memory"},
        "auth": {"mode": "tmp", "allowUngated": True},
    }
    base.update(spec)
    return HubRecord(ns, name, f"uid-{name}", created, 1, JupyterHubDeploymentSpec.model_validate(base))


def pinned(slug: str, n: int = 0) -> str:
    return f"r.example.edu/nb@sha256:{(abs(hash(slug)) + n) % 10**12:064d}"


def course(name, slug=None, *, ns=NS, created="2026-01-01T00:00:00Z", gpu="none", resolved=True, **spec):
    slug = slug or name
    s = CourseImageSpec.model_validate(
        {"course": slug, "image": f"r.example.edu/nb:{slug}", "gpu": gpu, **spec}
    )
    image = resolved if isinstance(resolved, str) else (pinned(slug) if resolved else None)
    return CourseRecord(ns, name, f"uid-{name}", created, 1, (), s, image)


def observe(h: HubRecord, courses=(), **kw) -> Observed:
    kw.setdefault("hubs", (h,))
    kw.setdefault("namespace_labels", {})
    kw.setdefault("status", {})
    return Observed(hub=h, courses=tuple(courses), **kw)


def step(plan, name):
    return next((s for s in plan.steps if s.name == name), None)


def cond(conds, type_):
    return next(c for c in conds if c.type == type_)


def allowlist_doc(plan) -> dict:
    index = [
        m for m in step(plan, "allowlist").apply if m["metadata"]["name"] == allowlist_mod.ALLOWLIST_CONFIGMAP
    ]
    return json.loads(index[0]["data"][allowlist_mod.ALLOWLIST_KEY])


def rolled_out_copy(ds: dict) -> dict:
    ds = json.loads(json.dumps(ds))
    ds["metadata"]["generation"] = 1
    ds["status"] = {
        "observedGeneration": 1,
        "desiredNumberScheduled": 2,
        "updatedNumberScheduled": 2,
        "numberReady": 2,
        "numberUnavailable": 0,
    }
    return ds


# -- namespace ------------------------------------------------------------------
def test_a_second_hub_in_a_namespace_writes_nothing_and_says_why():
    older, younger = hub("a", "2026-01-01T00:00:00Z"), hub("b", "2026-02-01T00:00:00Z")
    plan = plan_round(observe(younger, [course("c1")], hubs=(older, younger)))
    assert plan.steps == [] and plan.publications == {} and plan.run_release is None
    c = cond(plan.conditions, "ReleaseDeployed")
    assert (c.status, c.reason) == (False, "NamespaceTaken") and "JupyterHubDeployment a" in c.message


# -- publication ----------------------------------------------------------------
def test_resolved_courses_are_published_in_one_allowlist_with_their_rbac():
    h = hub()
    plan = plan_round(observe(h, [course("c1"), course("c2", gpu="optional")]))
    names = [m["metadata"]["name"] for m in step(plan, "allowlist").apply]
    # The Role that lets the hub read the allowlist comes before the allowlist itself.
    assert names[-1] == allowlist_mod.ALLOWLIST_CONFIGMAP and "coursehub-hub-allowlist" in names
    doc = allowlist_doc(plan)
    assert doc["version"] == 1 and set(doc["courses"]) == {"c1", "c2"}
    assert doc["courses"]["c1"]["image"] == pinned("c1")
    assert plan.courses == 2 and plan.published == {"c1": pinned("c1"), "c2": pinned("c2")}
    assert {p.state for p in plan.publications.values()} == {"Published"}
    assert cond(plan.conditions, "CoursesPublished").status is True


def test_unresolved_course_waits_outside_the_allowlist():
    plan = plan_round(observe(hub(), [course("c1", resolved=False)]))
    assert allowlist_doc(plan)["courses"] == {}
    (pub,) = plan.publications.values()
    assert pub.state == "NotResolved" and pub.image is None


def test_duplicate_slug_goes_to_the_older_course_and_the_younger_says_so():
    old = course("old", "Stats", created="2026-01-01T00:00:00Z")
    new = course("new", "stats", created="2026-02-01T00:00:00Z")
    plan = plan_round(observe(hub(), [new, old]))
    assert plan.publications[old.key].state == "Published"
    dup = plan.publications[new.key]
    assert dup.state == "DuplicateCourse" and f"{NS}/old" in dup.message
    assert "1 CourseImages claim a slug" in cond(plan.conditions, "CoursesPublished").message


def test_publish_after_pull_waits_for_the_pullers_then_offers_the_new_digest():
    h = hub(prePull={"publishAfterPull": True})
    c = course("c1")
    first = plan_round(observe(h, [c]))
    assert first.publications[c.key].state == "WaitingForPull" and first.pulling
    assert allowlist_doc(first)["courses"] == {}
    # The pullers ran and rolled out with the image: offered now.
    (ds,) = [m for m in step(first, "pullers").apply if m["kind"] == "DaemonSet"]
    live = {puller_mod.GENERAL: rolled_out_copy(ds), puller_mod.GPU: None}
    second = plan_round(observe(h, [c], live_pullers=live))
    pub = second.publications[c.key]
    assert (pub.state, pub.image, pub.prepull) == ("Published", pinned("c1"), "PrePulled")
    assert not second.pulling


def test_publish_after_pull_keeps_the_previous_digest_until_the_new_one_is_pulled():
    h = hub(prePull={"publishAfterPull": True})
    c = course("c1", resolved=pinned("c1", 1))
    plan = plan_round(observe(h, [c], live_allowlist={"c1": pinned("c1")}))
    pub = plan.publications[c.key]
    assert pub.state == "Published" and pub.image == pinned("c1") and "previous digest" in pub.message
    assert allowlist_doc(plan)["courses"]["c1"]["image"] == pinned("c1")
    assert plan.pulling


def rolling_again(ds: dict, nodes: int = 2) -> dict:
    """`ds` as the API server shows it right after a write: a new generation not rolled out yet."""
    ds = rolled_out_copy(ds)
    ds["metadata"]["generation"] = 2
    ds["status"]["desiredNumberScheduled"] = nodes
    return ds


def test_a_pulled_course_stays_pre_pulled_while_the_puller_rolls_out_to_add_another():
    # bench_scale, 1,000 courses: 87 courses went Ready -> Pulling -> Ready (two more writes
    # each) because every later puller rollout made all its images "Pulling" again.
    h = hub()
    c1, c2 = course("c1"), course("c2")
    (ds1,) = [m for m in step(plan_round(observe(h, [c1])), "pullers").apply if m["kind"] == "DaemonSet"]
    first = plan_round(observe(h, [c1, c2], live_pullers={puller_mod.GENERAL: rolled_out_copy(ds1)}))
    assert first.publications[c1.key].prepull == "PrePulled"
    (ds2,) = [m for m in step(first, "pullers").apply if m["kind"] == "DaemonSet"]
    second = plan_round(
        observe(
            h, [c1, c2], live_pullers={puller_mod.GENERAL: rolling_again(ds2)}, pulled_before=first.pulled_on
        )
    )
    assert second.publications[c1.key].prepull == "PrePulled"
    assert second.publications[c2.key].prepull == "Pulling" and second.pulling
    # Without the memory (an operator restart) it is only known once the rollout is done.
    fresh = plan_round(observe(h, [c1, c2], live_pullers={puller_mod.GENERAL: rolling_again(ds2)}))
    assert fresh.publications[c1.key].prepull == "Pulling"
    # A node more: it has pulled nothing yet, so nothing is known pre-pulled until it has.
    grown = plan_round(
        observe(
            h,
            [c1, c2],
            live_pullers={puller_mod.GENERAL: rolling_again(ds2, nodes=3)},
            pulled_before=first.pulled_on,
        )
    )
    assert grown.publications[c1.key].prepull == "Pulling"
    # An image taken out of the puller is not remembered as pulled.
    (ds_c2,) = [m for m in step(plan_round(observe(h, [c2])), "pullers").apply if m["kind"] == "DaemonSet"]
    dropped = puller_mod.known_pulled(first.pulled_on, {puller_mod.GENERAL: rolling_again(ds_c2)})
    assert c1.resolved_image not in dropped[puller_mod.GENERAL][1]


def general_puller(plan) -> dict | None:
    return next((m for m in step(plan, "pullers").apply if m["kind"] == "DaemonSet"), None)


def test_during_a_burst_a_live_puller_keeps_its_images_until_the_burst_is_over():
    # bench_scale, 1,000 courses: the general puller was written 7 times in one burst, each a
    # 1,000-container pod rolled onto every node again: most of the API server's work.
    h = hub()
    c1, c2 = course("c1"), course("c2")
    live = rolled_out_copy(general_puller(plan_round(observe(h, [c1]))))
    owned = frozenset({("DaemonSet", puller_mod.GENERAL)})

    def round_with(**kw):
        return plan_round(observe(h, [c1, c2], live_pullers={puller_mod.GENERAL: live}, owned=owned, **kw))

    held = round_with(burst=True)
    assert general_puller(held) is None and held.pullers_held == {puller_mod.GENERAL}
    assert ("DaemonSet", puller_mod.GENERAL) not in (
        step(held, "prune").delete if step(held, "prune") else ()
    )
    # the new course is published at once and says it is still being pulled; the old stays pulled
    assert held.publications[c2.key].state == "Published"
    assert held.publications[c2.key].prepull == "Pulling" and held.pulling
    assert held.publications[c1.key].prepull == "PrePulled"

    # the first round after the burst writes every image at once
    after = round_with(burst=False)
    assert puller_mod.images_of(general_puller(after)) == {c1.resolved_image, c2.resolved_image}
    assert after.pullers_held == frozenset()
    # a stream of changes still reaches the nodes every puller_hold_max seconds
    capped = round_with(burst=True, puller_held_for=10.0, puller_hold_max=10)
    assert general_puller(capped) is not None and capped.pullers_held == frozenset()
    still = round_with(burst=True, puller_held_for=9.9, puller_hold_max=10)
    assert general_puller(still) is None
    # 0: never hold
    never = round_with(burst=True, puller_hold_max=0)
    assert general_puller(never) is not None


def test_course_statuses_wait_for_a_burst_s_pull_but_a_lone_change_s_do_not():
    def deadline(now, previous=None, *, burst=False, held=False, pulling=True, new=5):
        return burst_pull_deadline(
            now=now,
            previous=previous,
            burst=burst,
            pullers_held=held,
            pulling=pulling,
            new_pulling=new,
            puller_hold_max=10.0,
            rollout_wait=6.0,
        )

    # a lone change: "Published" is written at once, "PrePulled" once pulled
    assert deadline(100.0) is None
    # even one that came while a round ran (one the previous change's rollout woke)
    assert deadline(100.0, burst=True, held=True, new=1) is None
    # a burst: at most the puller's hold plus the rollout, counted from the burst's first round
    assert deadline(100.0, burst=True, held=True) == 116.0
    assert deadline(104.0, 116.0, burst=True, held=True, new=0) == 116.0
    # the round after the burst writes the puller: the rollout gets rollout_wait from then
    assert deadline(105.0, 116.0, new=0) == 111.0
    assert deadline(107.0, 111.0, new=0) == 111.0  # later rounds while it rolls out do not extend it
    assert deadline(115.0, 116.0, new=0) == 116.0  # nor past the burst's own bound
    # pulled: nothing waits any more
    assert deadline(108.0, 111.0, pulling=False) is None
    # a deadline that passed while the hub still pulls (a node that cannot pull) is over: a
    # later burst holds anew, a round that is no burst holds nothing
    assert deadline(120.0, 116.0, burst=True, held=True) == 136.0
    assert deadline(120.0, 116.0, new=0) is None


def test_a_round_starts_pulling_the_courses_published_with_a_new_image():
    h = hub()
    a, b, c = course("a"), course("b"), course("c")

    def pub(crs, prepull="Pulling", state="Published"):
        return Publication(h.ref, h.spec.domain, state, "", crs.resolved_image, prepull)

    before = {a.key: pub(a), b.key: pub(b, "PrePulled"), c.key: None}
    after = {a.key: pub(a), b.key: pub(b, "PrePulled"), c.key: pub(c)}
    assert newly_pulling(before, after) == 1  # c; a was already pulling that image
    moved = Publication(h.ref, h.spec.domain, "Published", "", pinned("a", 1), "Pulling")
    assert newly_pulling(before, {**after, a.key: moved}) == 2  # a's digest moved
    assert newly_pulling(before, {c.key: pub(c, state="WaitingForPull")}) == 0


def test_a_course_that_asks_not_to_be_pre_pulled_is_never_pulling():
    # It is in no puller, so "Pulling" would be forever (and count towards a burst's pull).
    plan = plan_round(observe(hub(), [course("a"), course("b", prePull=False)]))
    assert plan.publications[course("a").key].prepull == "Pulling"
    assert plan.publications[course("b").key].prepull == "PrePullDisabled"


def test_a_burst_never_holds_a_puller_to_create_or_one_whose_images_are_unchanged():
    h = hub()
    c1 = course("c1")
    # nothing live yet: the puller is created in the burst's first round like any other
    created = plan_round(observe(h, [c1], burst=True))
    assert general_puller(created) is not None and created.pullers_held == frozenset()
    # the same images live: no hold (a change of placement is written at once)
    live = rolled_out_copy(general_puller(created))
    same = plan_round(observe(h, [c1], live_pullers={puller_mod.GENERAL: live}, burst=True))
    assert general_puller(same) is not None and same.pullers_held == frozenset()


def test_pullers_hold_the_courses_and_are_pruned_when_pre_pulling_is_turned_off():
    h = hub()
    plan = plan_round(observe(h, [course("c1")]))
    kinds = sorted(m["kind"] for m in step(plan, "pullers").apply)
    assert kinds == ["DaemonSet", "NetworkPolicy"]
    assert plan.pulling and next(iter(plan.publications.values())).prepull == "Pulling"

    off = hub(prePull={"enabled": False})
    owned = frozenset({("DaemonSet", puller_mod.GENERAL), ("NetworkPolicy", puller_mod.NETWORK_POLICY)})
    plan = plan_round(observe(off, [course("c1")], owned=owned))
    assert step(plan, "pullers").apply == ()
    assert set(step(plan, "prune").delete) == set(owned)
    assert next(iter(plan.publications.values())).prepull == "PrePullDisabled"


def test_gpu_course_on_a_hub_without_gpu_nodes_says_why_in_its_own_reason():
    c = course("deep", gpu="required")
    plan = plan_round(observe(hub(), [c, course("plain")]))
    pub = plan.publications[c.key]
    assert pub.state == "NoGpuNodes" and "spec.singleuser.gpuNodes" in pub.message
    assert pub.prepull == "NoGpuNodes"  # never "the pre-puller DaemonSet is rolling out"
    # Still in the allowlist: a launch link gets the hub's own clear refusal.
    assert "deep" in allowlist_doc(plan)["courses"]
    _fields, conds = course_status(c, RESOLVED, [pub], None)
    ready = cond(conds, "Ready")
    assert (ready.status, ready.reason) == (False, "NoGpuNodes")


def test_gpu_course_with_gpu_nodes_is_pulled_by_the_gpu_puller():
    h = hub(singleuser={"gpuNodes": {"label": "gpu=true"}})
    c = course("deep", gpu="required")
    plan = plan_round(observe(h, [c]))
    assert plan.publications[c.key].state == "Published"
    names = {m["metadata"]["name"] for m in step(plan, "pullers").apply}
    assert puller_mod.GPU in names and puller_mod.GENERAL not in names


def test_course_whose_pull_secret_is_elsewhere_is_published_but_says_it_is_not_pre_pulled():
    h = hub(courses={"namespaces": "All"})
    c = course("c1", ns="other", imagePullSecretRef={"name": "regcred"})
    plan = plan_round(observe(h, [c]))
    pub = plan.publications[c.key]
    assert pub.state == "Published" and pub.prepull == "PullSecretElsewhere"
    assert "regcred" in pub.prepull_message
    _fields, conds = course_status(c, None, [pub], None)
    assert cond(conds, "PrePulled").reason == "PullSecretElsewhere"


def test_learner_pods_never_get_a_pull_secret_name_from_another_namespace():
    # The name would resolve to a Secret of the hub's namespace (a confused deputy): the
    # course is offered without it and its Published condition says why, also with
    # pre-pulling off (where PrePulled says nothing about it).
    h = hub(courses={"namespaces": "All"}, prePull={"enabled": False})
    elsewhere = course("c1", ns="other", imagePullSecretRef={"name": "regcred"})
    home = course("c2", imagePullSecretRef={"name": "hubcred"})
    plan = plan_round(observe(h, [elsewhere, home]))
    entries = allowlist_doc(plan)["courses"]
    assert entries["c1"]["imagePullSecret"] is None and entries["c1"]["image"] == pinned("c1")
    assert entries["c2"]["imagePullSecret"] == "hubcred"  # the hub's own namespace: used
    _fields, conds = course_status(elsewhere, RESOLVED, [plan.publications[elsewhere.key]], None)
    published = cond(conds, "Published")
    assert (published.status, published.reason) == (True, "PullSecretElsewhere")
    assert "regcred" in published.message and "learner pods get no pull secret" in published.message
    _fields, conds = course_status(home, RESOLVED, [plan.publications[home.key]], None)
    assert cond(conds, "Published").reason == "Published"


# -- secrets, gateway ------------------------------------------------------------
GATEWAY = {
    "oidc": {
        "issuerURL": "https://sso.example.edu/realms/olapps",
        "secretRef": {"name": "learn-oidc"},
        "allowedGroups": ["learners"],
    }
}


def secret(name, uid="u1", rv="1", **data) -> dict:
    return {
        "metadata": {"name": name, "uid": uid, "resourceVersion": rv},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


OIDC = dict(client_id="id", client_secret="s", cookie_secret="0123456789abcdef0123456789abcdef")


def test_missing_gateway_secret_keeps_the_running_gate_and_leaves_the_release_alone():
    h = hub(gateway=GATEWAY)
    owned = frozenset({("Deployment", "coursehub-gateway"), ("Service", "coursehub-gateway")})
    plan = plan_round(observe(h, [course("c1")], secrets={"learn-oidc": None}, owned=owned))
    assert step(plan, "gateway") is None and step(plan, "prune") is None
    assert cond(plan.conditions, "GatewayReady").status is False
    rel = cond(plan.conditions, "ReleaseDeployed")
    assert rel.reason == "WaitingForSecrets" and plan.run_release is None
    # Courses publish regardless.
    assert plan.publications and step(plan, "allowlist") is not None


def test_gateway_with_its_secret_is_applied_and_stale_gateway_objects_are_pruned():
    h = hub(gateway=GATEWAY)
    stale = ("ConfigMap", "coursehub-gateway-old")
    plan = plan_round(
        observe(h, secrets={"learn-oidc": secret("learn-oidc", **OIDC)}, owned=frozenset({stale}))
    )
    kinds = sorted(m["kind"] for m in step(plan, "gateway").apply)
    assert "Deployment" in kinds and "NetworkPolicy" in kinds
    assert step(plan, "prune").delete == (stale,)
    assert required_secret_names(h) == ["learn-oidc"]


def test_gateway_secret_rotation_changes_the_gateway_but_not_the_release():
    h = hub(gateway=GATEWAY)
    a = plan_round(observe(h, secrets={"learn-oidc": secret("learn-oidc", rv="1", **OIDC)}))
    b = plan_round(observe(h, secrets={"learn-oidc": secret("learn-oidc", rv="2", **OIDC)}))
    assert step(a, "gateway").apply != step(b, "gateway").apply
    assert a.run_release[0] == b.run_release[0]


def test_database_secret_rotation_changes_the_release_and_no_content_reaches_the_values():
    spec = {"database": {"type": "postgres", "urlSecretRef": {"name": "db", "key": "DATABASE_URL"}}}
    h = hub(**spec)
    url = "postgresql://hub:hunter2@db/jupyterhub"
    a = plan_round(observe(h, secrets={"db": secret("db", rv="1", DATABASE_URL=url)}))
    b = plan_round(observe(h, secrets={"db": secret("db", rv="2", DATABASE_URL=url)}))
    assert a.run_release[0] != b.run_release[0]
    assert "hunter2" not in json.dumps(a.run_release[2])


# -- release ---------------------------------------------------------------------
def test_first_round_starts_helm_as_the_tenant_and_reports_progress():
    plan = plan_round(observe(hub()))
    _want, _chart, _values, user = plan.run_release
    assert user == f"system:serviceaccount:{NS}:coursehub-helm"
    assert cond(plan.conditions, "ReleaseDeployed").reason == "Progressing"
    tenancy = step(plan, "tenancy")
    assert plan.steps[0] is tenancy and {m["kind"] for m in tenancy.apply} == {
        "ServiceAccount",
        "RoleBinding",
    }


def test_helm_running_is_not_started_twice():
    plan = plan_round(observe(hub(), release_running=True))
    assert plan.run_release is None


def test_helm_success_is_reported_once_with_an_event_and_remembered():
    h = hub()
    want = plan_round(observe(h)).run_release[0]
    done = ReleaseResult(want, True, revision=3, chart_version="4.4.1", changed=True)
    plan = plan_round(observe(h, release=done))
    assert cond(plan.conditions, "ReleaseDeployed").status is True
    assert plan.release == {"name": "learn", "revision": 3, "chartVersion": "4.4.1", "valuesHash": want}
    assert plan.deployed_fingerprint == want and plan.run_release is None
    assert [e[1] for e in plan.events] == ["ReleaseUpgraded"]
    # Next round: known deployed, no Helm call, no event.
    again = plan_round(observe(h, status={"release": plan.release}, deployed_fingerprint=want))
    assert again.run_release is None and again.events == []
    assert cond(again.conditions, "ReleaseDeployed").status is True


def test_after_a_restart_the_deployed_hash_in_status_keeps_ready_while_helm_checks():
    h = hub()
    want = plan_round(observe(h)).run_release[0]
    status = {"release": {"name": "learn", "revision": 2, "chartVersion": "4.4.1", "valuesHash": want}}
    plan = plan_round(observe(h, status=status))
    assert plan.run_release is not None  # a read-only check by Helm
    assert cond(plan.conditions, "ReleaseDeployed").status is True


def test_deterministic_helm_failure_is_not_retried_and_warns_once():
    h = hub()
    want = plan_round(observe(h)).run_release[0]
    failed = ReleaseResult(want, False, "ValuesRejected", "values don't meet the schema", age=3600)
    plan = plan_round(observe(h, release=failed))
    c = cond(plan.conditions, "ReleaseDeployed")
    assert (c.status, c.reason) == (False, "ValuesRejected") and plan.run_release is None
    assert [e[:2] for e in plan.events] == [("Warning", "ValuesRejected")]
    said = {"conditions": [{"type": "ReleaseDeployed", "reason": "ValuesRejected", "message": c.message}]}
    assert plan_round(observe(h, release=failed, status=said)).events == []


def test_a_chart_the_tenant_may_not_install_is_not_retried():
    # Forbidden (e.g. the chart renders into another namespace): the same chart is refused
    # again, so a retry every RELEASE_RETRY_SECONDS would only add a Helm revision each time.
    h = hub()
    want = plan_round(observe(h)).run_release[0]
    refused = ReleaseResult(want, False, "Forbidden", 'configmaps "x" is forbidden', age=3600)
    plan = plan_round(observe(h, release=refused))
    c = cond(plan.conditions, "ReleaseDeployed")
    assert (c.status, c.reason) == (False, "Forbidden") and plan.run_release is None


def test_one_set_of_deterministic_release_reasons():
    from coursehub import helm
    from coursehub.desired import hub_round

    # helm.py marks a refused fingerprint with the hub round's own set, not a copy of it.
    assert not hasattr(helm, "DETERMINISTIC_REASONS")
    assert helm.DETERMINISTIC_RELEASE_REASONS is hub_round.DETERMINISTIC_RELEASE_REASONS


def test_transient_helm_failure_is_retried_after_a_while():
    h = hub()
    want = plan_round(observe(h)).run_release[0]
    fresh = ReleaseResult(want, False, "ReleaseFailed", "cluster unreachable", age=1)
    assert plan_round(observe(h, release=fresh)).run_release is None
    old = ReleaseResult(want, False, "ReleaseFailed", "cluster unreachable", age=60)
    assert plan_round(observe(h, release=old)).run_release is not None


def test_a_result_for_other_values_is_ignored():
    h = hub()
    other = ReleaseResult("0" * 16, True, revision=1, chart_version="4.4.1")
    plan = plan_round(observe(h, release=other))
    assert plan.run_release is not None and plan.release is None


def test_refused_values_and_charts_leave_the_release_alone_with_the_reason():
    h = hub(values={"hub": {"image": {"name": "evil/hub"}}})
    plan = plan_round(observe(h, [course("c1")]))
    c = cond(plan.conditions, "ReleaseDeployed")
    assert (c.status, c.reason) == (False, "InvalidValues") and "hub.image" in c.message
    assert plan.run_release is None and plan.publications  # courses publish regardless

    strict = ChartPolicy(repositories=("https://charts.example.edu/",))
    plan = plan_round(observe(hub(), chart_policy=strict))
    assert cond(plan.conditions, "ReleaseDeployed").reason == "InvalidChart" and plan.run_release is None


# -- sharded allowlist --------------------------------------------------------------
def long_course(i: int) -> CourseRecord:
    slug = f"{i:05d}" + "x" * 58  # 63 characters, the maximum
    spec = {
        "course": slug,
        "image": "r.example.edu/" + "n" * 480 + f":t{i}",
        "displayName": "D" * 128,
        "defaultNotebook": "nb/" + "p" * 500 + ".ipynb",
        "imagePullSecretRef": {"name": "s" * 253},
        "resources": {
            "memory": {"limit": "64G", "guarantee": "32G"},
            "cpu": {"limit": "16", "guarantee": "8"},
        },
    }
    image = "r.example.edu/" + "n" * 480 + f"@sha256:{i:064d}"
    return CourseRecord(
        NS, f"c{i}", f"u{i}", "2026-01-01T00:00:00Z", 1, (), CourseImageSpec.model_validate(spec), image
    )


@pytest.fixture(scope="module")
def ten_thousand() -> list[CourseRecord]:
    return [long_course(i) for i in range(10_000)]


def test_ten_thousand_courses_with_maximum_length_fields_publish_in_shards(ten_thousand):
    h = hub(prePull={"enabled": False})
    plan = plan_round(observe(h, ten_thousand))
    objs = step(plan, "allowlist").apply
    shards = [m for m in objs if m["metadata"]["name"].startswith(allowlist_mod.SHARD_PREFIX)]
    index = objs[-1]
    assert index["metadata"]["name"] == allowlist_mod.ALLOWLIST_CONFIGMAP
    assert len(shards) > 1
    for m in objs:
        assert len(json.dumps(m).encode()) < 1024 * 1024  # every object fits a ConfigMap
    doc = json.loads(index["data"][allowlist_mod.ALLOWLIST_KEY])
    assert doc["version"] == 2 and doc["shards"] == [s["metadata"]["name"] for s in shards]
    assert plan.courses == 10_000 and cond(plan.conditions, "CoursesPublished").status is True
    # The hub may read exactly these shards.
    role = next(m for m in objs if m["kind"] == "Role")
    assert sorted(shards_names := doc["shards"]) == next(
        r["resourceNames"] for r in role["rules"] if r["verbs"] == ["get"]
    )
    # Every course is in exactly one shard, and the live view reads them all back.
    live = allowlist_mod.live_published(index, {s["metadata"]["name"]: s for s in shards})
    assert live == plan.published and len(shards_names) == len(shards)


def test_one_course_change_rewrites_one_shard(ten_thousand):
    h = hub(prePull={"enabled": False})
    a = plan_round(observe(h, ten_thousand))
    changed = list(ten_thousand)
    changed[17] = CourseRecord(
        **{**changed[17].__dict__, "resolved_image": changed[17].resolved_image[:-1] + "9"}
    )
    b = plan_round(observe(h, changed))
    names_a = {m["metadata"]["name"] for m in step(a, "allowlist").apply}
    names_b = {m["metadata"]["name"] for m in step(b, "allowlist").apply}
    assert len(names_b - names_a) == 1
    # The old shard goes, after the index: the prune step comes after the allowlist step.
    gone = (names_a - names_b).pop()
    owned = frozenset(("ConfigMap", n) for n in names_a if n.startswith(allowlist_mod.SHARD_PREFIX))
    c = plan_round(observe(h, changed, owned=owned))
    assert step(c, "prune").delete == (("ConfigMap", gone),)
    assert [s.name for s in c.steps].index("prune") > [s.name for s in c.steps].index("allowlist")


def test_over_capacity_keeps_what_is_published_and_says_so(monkeypatch):
    monkeypatch.setattr(allowlist_mod, "CONFIGMAP_BUDGET", 4_000)
    monkeypatch.setattr(allowlist_mod, "MAX_SHARDS", 2)
    h = hub(prePull={"enabled": False})
    courses = [long_course(i) for i in range(6)]
    live = {c.slug: c.resolved_image for c in courses[:2]}
    plan = plan_round(observe(h, courses, live_allowlist=live))
    c = cond(plan.conditions, "CoursesPublished")
    assert (c.status, c.reason) == (False, "AllowlistFull") and "4 courses wait" in c.message
    assert plan.published == live
    states = {k[1]: p.state for k, p in plan.publications.items()}
    assert states == {
        "c0": "Published",
        "c1": "Published",
        "c2": "AllowlistFull",
        "c3": "AllowlistFull",
        "c4": "AllowlistFull",
        "c5": "AllowlistFull",
    }


def test_over_capacity_even_for_what_is_live_leaves_the_live_allowlist_untouched(monkeypatch):
    monkeypatch.setattr(allowlist_mod, "CONFIGMAP_BUDGET", 500)
    monkeypatch.setattr(allowlist_mod, "MAX_SHARDS", 2)
    h = hub(prePull={"enabled": False})
    courses = [long_course(i) for i in range(4)]
    live = {c.slug: c.resolved_image for c in courses}
    index = {
        "data": {
            allowlist_mod.ALLOWLIST_KEY: json.dumps({"version": 2, "shards": ["coursehub-allowlist-aa"]})
        }
    }
    owned = frozenset({("ConfigMap", "coursehub-allowlist"), ("ConfigMap", "coursehub-allowlist-aa")})
    plan = plan_round(observe(h, courses, live_allowlist=live, live_index=index, owned=owned))
    assert step(plan, "allowlist") is None and step(plan, "prune") is None
    assert all(p.state == "Published" for p in plan.publications.values())


# -- after the writes ----------------------------------------------------------------
def test_a_failed_allowlist_write_keeps_the_old_publications_and_blocks_only_shard_pruning():
    plan = plan_round(observe(hub(), [course("c1")]))
    conds, pubs = fold_failures(plan, {"allowlist": "ServerError: etcd is away"})
    c = cond(conds, "CoursesPublished")
    assert (c.status, c.reason) == (False, "ApplyFailed") and "etcd is away" in c.message
    assert pubs is None
    assert cond(conds, "Ready").status is False
    assert skipped_steps({"allowlist"}) == {"prune"}
    assert skipped_steps({"tenancy"}) == {"release"}
    assert skipped_steps({"gateway"}) == set()
    # puller chunks taking over courses failed to write: the chunks they replace stay
    assert skipped_steps({"pullers"}) == {"prune"}


def test_a_failed_gateway_write_is_reported_on_the_gateway_alone():
    plan = plan_round(observe(hub(), [course("c1")]))
    conds, pubs = fold_failures(plan, {"gateway": "KubeError: forbidden"})
    assert cond(conds, "GatewayReady").reason == "ApplyFailed"
    assert cond(conds, "CoursesPublished").status is True
    assert pubs == plan.publications


def test_the_round_is_deterministic():
    courses = [course(f"c{i}", gpu=("none", "optional", "required")[i % 3]) for i in range(20)]
    h = hub(singleuser={"gpuNodes": {"label": "gpu=true"}})
    a, b = plan_round(observe(h, courses)), plan_round(observe(h, list(reversed(courses))))
    assert [s.apply for s in a.steps] == [s.apply for s in b.steps]
    assert fingerprint(a.run_release[2]) == fingerprint(b.run_release[2])


def test_a_course_not_resolved_since_a_restart_keeps_what_learners_get_now():
    # The operator was killed after writing the allowlist and before the course's status:
    # on restart the course is unresolved, and its live entry stays until it resolves again.
    h = hub()
    c = course("c1", resolved=False)
    plan = plan_round(observe(h, [c], live_allowlist={"c1": pinned("c1")}))
    assert allowlist_doc(plan)["courses"]["c1"]["image"] == pinned("c1")
    pub = plan.publications[c.key]
    assert (pub.state, pub.image) == ("Published", pinned("c1")) and "resolves again" in pub.message


@pytest.mark.parametrize(
    "live",
    [
        "other.example.edu/nb@sha256:" + "1" * 64,  # another registry
        "r.example.edu/other@sha256:" + "1" * 64,  # another repository
        "r.example.edu/nb:c1",  # a tag: what it names may move
    ],
)
def test_a_live_entry_outside_the_course_s_repository_is_not_kept(live):
    h = hub()
    c = course("c1", resolved=False)
    plan = plan_round(observe(h, [c], live_allowlist={"c1": live}))
    assert "c1" not in allowlist_doc(plan)["courses"]
    assert plan.publications[c.key].state == "NotResolved"
