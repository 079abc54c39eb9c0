"""Pure selection, slug ownership, allowlist, puller and status decisions."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from coursehub.api.courseimage import CourseImageSpec
from coursehub.api.jupyterhubdeployment import JupyterHubDeploymentSpec
from coursehub.conditions import Cond, merge
from coursehub.desired import allowlist, puller
from coursehub.desired.courses import CourseRecord, HubRecord, launch_url, select_courses
from coursehub.desired.status import Publication, Resolution, course_status
from fixtures.slugs import SLUGS_32

DIGEST = "sha256:" + "a" * 64


def hub(**spec) -> HubRecord:
    base = {
        "chart": {"path": "/charts/jupyterhub"},
        "domain": "nb.example.edu",
        "database": {"type": "sqlite-memory"},
        "auth": {"mode": "tmp", "allowUngated": True},
    }
    base.update(spec)
    return HubRecord(
        "jupyter", "learn", "uid-h", "2026-01-01T00:00:00Z", 1, JupyterHubDeploymentSpec.model_validate(base)
    )


def course(
    name,
    slug,
    *,
    ns="jupyter",
    created="2026-01-01T00:00:00Z",
    gpu="none",
    labels=(),
    resolved=True,
    pre_pull=True,
    image=None,
) -> CourseRecord:
    spec = CourseImageSpec.model_validate(
        {"course": slug, "image": image or f"r.example.edu/nb:{slug}", "gpu": gpu, "prePull": pre_pull}
    )
    pinned = f"r.example.edu/nb@sha256:{abs(hash(slug)) % 10**10:064d}" if resolved else None
    return CourseRecord(ns, name, f"uid-{name}", created, 1, tuple(labels), spec, pinned)


def test_same_namespace_by_default():
    h = hub()
    sel = select_courses(h, [course("a", "a"), course("b", "b", ns="other")], {})
    assert set(sel.winners) == {"a"}


def test_label_and_namespace_selectors():
    h = hub(
        courses={
            "namespaces": "Selector",
            "namespaceSelector": {"matchLabels": {"team": "ai"}},
            "selector": {"matchExpressions": [{"key": "hub", "operator": "In", "values": ["learn"]}]},
        }
    )
    cs = [
        course("a", "a", ns="ns1", labels=(("hub", "learn"),)),
        course("b", "b", ns="ns2", labels=(("hub", "learn"),)),
        course("c", "c", ns="ns1", labels=(("hub", "other"),)),
    ]
    sel = select_courses(h, cs, {"ns1": {"team": "ai"}, "ns2": {"team": "bio"}})
    assert set(sel.winners) == {"a"}


def test_duplicate_slug_older_wins_case_insensitively():
    old = course("old", "Stats-101", created="2026-01-01T00:00:00Z")
    new = course("new", "stats-101", created="2026-02-01T00:00:00Z")
    sel = select_courses(hub(), [new, old], {})
    assert sel.winners["stats-101"].name == "old"
    assert sel.duplicates[("jupyter", "new")].name == "old"


def test_allowlist_is_deterministic_and_sorted():
    h = hub(courses={"default": "stats_101"})
    cs = [course(f"c{i}", s) for i, s in enumerate(SLUGS_32)]
    sel = select_courses(h, cs, {})
    pub = allowlist.published_images(sel.winners, publish_after_pull=False, pulled=set(), previous={})
    a = allowlist.serialize(allowlist.allowlist_document(h, sel.winners, pub))
    sel2 = select_courses(h, list(reversed(cs)), {})
    b = allowlist.serialize(allowlist.allowlist_document(h, sel2.winners, pub))
    assert a == b
    doc = json.loads(a)
    assert list(doc["courses"]) == sorted(doc["courses"])
    assert len(doc["courses"]) == 32
    assert doc["default"] == "stats_101" and doc["onUnknown"] == "default"


def test_unresolved_course_is_not_published():
    sel = select_courses(hub(), [course("a", "a", resolved=False)], {})
    assert allowlist.published_images(sel.winners, publish_after_pull=False, pulled=set(), previous={}) == {}


def test_publish_after_pull_keeps_previous_digest_until_pulled():
    c = course("a", "a")
    winners = {"a": c}
    prev = {"a": "r.example.edu/nb@" + DIGEST}
    assert allowlist.published_images(winners, publish_after_pull=True, pulled=set(), previous=prev) == prev
    assert allowlist.published_images(winners, publish_after_pull=True, pulled=set(), previous={}) == {}
    assert allowlist.published_images(
        winners, publish_after_pull=True, pulled={c.resolved_image}, previous=prev
    ) == {"a": c.resolved_image}


def test_gpu_settings_from_hub():
    h = hub(
        singleuser={
            "gpuNodes": {
                "label": "ol.mit.edu/gpu_node=true",
                "toleration": "ol.mit.edu/gpu_node=true:NoSchedule",
            }
        }
    )
    g = allowlist.gpu_settings(h)
    assert g["nodeSelector"] == {"ol.mit.edu/gpu_node": "true"}
    assert g["tolerations"] == [
        {"key": "ol.mit.edu/gpu_node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    ]


def test_container_names_are_dns_labels_and_collision_free():
    names = [puller.container_name(s) for s in SLUGS_32]
    assert len(set(names)) == len(names)
    for n in names:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", n), n
    assert puller.container_name("a.b") != puller.container_name("a_b")


@given(st.lists(st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", fullmatch=True), max_size=50))
def test_container_names_unique_for_any_slugs(slugs):
    lowered = {s.lower() for s in slugs}
    names = {puller.container_name(s) for s in lowered}
    assert len(names) == len(lowered)
    assert all(len(n) <= 63 for n in names)


def test_gpu_images_only_in_gpu_puller():
    h = hub(singleuser={"gpuNodes": {"label": "gpu=true", "toleration": "gpu=true:NoSchedule"}})
    winners = {
        "cpu": course("a", "cpu"),
        "gpu": course("b", "gpu", gpu="required"),
        "opt": course("c", "opt", gpu="optional"),
        "nopull": course("d", "nopull", pre_pull=False),
    }
    ds = puller.desired_pullers(h, winners)
    general = puller.images_of(ds[puller.GENERAL])
    gpu = ds[puller.GPU]["spec"]["template"]["spec"]
    assert general == {winners["cpu"].resolved_image, winners["opt"].resolved_image}
    assert puller.images_of(ds[puller.GPU]) == {
        winners["gpu"].resolved_image,
        winners["opt"].resolved_image,
    }
    assert gpu["nodeSelector"] == {"gpu": "true"}
    assert {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in gpu["tolerations"]
    assert "nodeSelector" not in ds[puller.GENERAL]["spec"]["template"]["spec"]


def test_no_gpu_puller_without_gpu_nodes():
    ds = puller.desired_pullers(hub(), {"gpu": course("b", "gpu", gpu="required")})
    assert ds[puller.GPU] is None and ds[puller.GENERAL] is None


def test_prepull_disabled_removes_pullers():
    ds = puller.desired_pullers(hub(prePull={"enabled": False}), {"a": course("a", "a")})
    assert ds == {puller.GENERAL: None, puller.GPU: None}


def _rolled(ds, ready=True):
    live = json.loads(json.dumps(ds))
    live["metadata"]["generation"] = 2
    live["status"] = {
        "observedGeneration": 2,
        "desiredNumberScheduled": 2,
        "updatedNumberScheduled": 2,
        "numberReady": 2 if ready else 1,
    }
    return live


def test_pulled_images_needs_every_puller_rolled_out():
    h = hub(singleuser={"gpuNodes": {"label": "gpu=true"}})
    opt = course("c", "opt", gpu="optional")
    desired = puller.desired_pullers(h, {"opt": opt})
    live = {
        puller.GENERAL: _rolled(desired[puller.GENERAL]),
        puller.GPU: _rolled(desired[puller.GPU], ready=False),
    }
    assert puller.pulled_images(desired, puller.known_pulled({}, live)) == set()
    live[puller.GPU] = _rolled(desired[puller.GPU])
    assert puller.pulled_images(desired, puller.known_pulled({}, live)) == {opt.resolved_image}


def test_condition_transition_time_moves_only_on_flip():
    first = merge(None, [Cond("Ready", False, "Pending", "x")], 1, now="2026-01-01T00:00:00Z")
    same = merge(first, [Cond("Ready", False, "Other", "y")], 2, now="2026-01-02T00:00:00Z")
    flipped = merge(same, [Cond("Ready", True, "Ready", "z")], 2, now="2026-01-03T00:00:00Z")
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "2026-01-03T00:00:00Z"


def test_course_status_ready_when_resolved_published_pulled():
    c = course("a", "uai_source-uai.1")
    res = Resolution(1, True, "Resolved", "", DIGEST, c.resolved_image, "2026-01-01T00:00:00Z")
    pub = Publication(
        "jupyter/learn", "nb.example.edu", "Published", "published", c.resolved_image, "PrePulled"
    )
    fields, conds = course_status(c, res, [pub], None)
    by = {x.type: x for x in conds}
    assert by["Ready"].status is True
    assert fields["launchURL"] == "https://nb.example.edu/hub/tmplogin?course=uai_source-uai.1"
    assert fields["hubs"] == ["jupyter/learn"]


def test_course_status_reasons():
    c = course("a", "a")
    bad = Resolution(1, False, "ImageNotFound", "tag a not found")
    _, conds = course_status(c, bad, [], None)
    by = {x.type: x for x in conds}
    assert by["ImageResolved"].reason == "ImageNotFound"
    assert "last good image" in by["ImageResolved"].message  # the old digest keeps serving
    assert by["Published"].reason == "NoHub"
    assert by["Ready"].status is False
    dup = Publication("jupyter/learn", "d", "DuplicateCourse", "taken by jupyter/old")
    _, conds = course_status(c, None, [dup], None)
    assert {x.type: x for x in conds}["Published"].reason == "DuplicateCourse"


def test_launch_url_encodes():
    assert launch_url("nb.example.edu", "a b") == "https://nb.example.edu/hub/tmplogin?course=a%20b"


def test_course_selected_but_not_yet_published_is_publishing_not_nohub():
    _, conds = course_status(course("a", "a"), None, [], None, selecting_hubs=("jupyter/learn",))
    by = {x.type: x for x in conds}
    assert by["Published"].reason == "Publishing" and by["Published"].status is None
    assert by["Ready"].status is not True


def test_events_only_for_ready_flips_and_actionable_failures():
    from coursehub.conditions import events_for

    def c(t, st, reason):
        return {"type": t, "status": st, "reason": reason, "message": "m"}

    # first status: pending everything -> no events
    assert (
        events_for(None, [c("Ready", "Unknown", "Pending"), c("ImageResolved", "Unknown", "Resolving")]) == []
    )
    # sub-conditions turning True are covered by Ready's one event
    got = events_for(
        [c("Ready", "Unknown", "Pending")],
        [
            c("Ready", "True", "Ready"),
            c("ImageResolved", "True", "Resolved"),
            c("Published", "True", "Published"),
        ],
    )
    assert [(t, r) for t, r, _ in got] == [("Normal", "Ready")]
    # an actionable failure is a Warning; a transient one is silent
    got = events_for(
        [c("Ready", "True", "Ready")],
        [c("Ready", "False", "ImageNotFound"), c("ImageResolved", "False", "ImageNotFound")],
    )
    assert [(t, r) for t, r, _ in got] == [("Warning", "ImageNotFound"), ("Warning", "ImageNotFound")]
    assert events_for([c("Ready", "True", "Ready")], [c("Ready", "False", "Pulling")]) == []


def test_namespace_owner_is_the_oldest_hub_even_while_it_is_deleted():
    from dataclasses import replace

    from coursehub.desired.courses import namespace_owner

    old = replace(hub(), name="old", created="2026-01-01T00:00:00Z", deleting=True)
    new = replace(hub(), name="new", created="2026-02-01T00:00:00Z")
    elsewhere = replace(hub(), name="x", namespace="other", created="2025-01-01T00:00:00Z")
    assert namespace_owner([new, old, elsewhere], "jupyter").name == "old"
