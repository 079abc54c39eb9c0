"""The pure decisions of leader election and namespace claims (coursehub.leadership)."""

from __future__ import annotations

import json

import pytest

from coursehub.leadership import (
    CLAIMS_ANNOTATION,
    SHARD_CONFLICT,
    claim_step,
    conflict_message,
    conflict_status,
    leader_step,
    overlapping_namespaces,
    released,
)
from coursehub.settings import Settings

ARGS = dict(name="op", namespace="ops", duration=8.0)


def stored(body: dict, rv: str) -> dict:
    """What the API server would answer: the body with a resourceVersion."""
    return {**body, "metadata": {**body["metadata"], "resourceVersion": rv}}


def step(lease, who, now, seen=None, wall=1000.0):
    return leader_step(lease, identity=who, now=now, wall=wall + now, seen=seen, **ARGS)


def test_first_replica_creates_the_lease_and_leads():
    s = step(None, "a", 0)
    assert s.action == "create" and s.body["spec"]["holderIdentity"] == "a"
    assert s.body["spec"]["leaseDurationSeconds"] == 8 and s.body["spec"]["leaseTransitions"] == 0


def test_leader_renews_its_own_lease_with_the_read_resource_version():
    lease = stored(step(None, "a", 0).body, "5")
    s = step(lease, "a", 2)
    assert s.action == "renew" and s.body["metadata"]["resourceVersion"] == "5"
    assert s.body["spec"]["renewTime"] != lease["spec"]["renewTime"]
    assert s.body["spec"]["holderIdentity"] == "a"


def test_standby_waits_while_the_leader_renews_and_takes_over_only_after_a_silent_lease_duration():
    lease = stored(step(None, "a", 0).body, "1")
    seen = None
    # The leader renews every 2 s: the record keeps changing, the standby keeps waiting.
    for t in range(0, 40, 2):
        lease = stored(step(lease, "a", t).body, str(t + 2))
        s = step(lease, "b", t + 1, seen)
        assert s.action == "wait" and s.holder == "a"
        seen = s.seen
    # The leader dies at t=38: the same record is read again and again.
    waits = 0
    t = 39.0
    while (s := step(lease, "b", t, seen)).action == "wait":
        seen = s.seen
        waits += 1
        t += 1
    assert s.action == "take" and s.body["spec"]["holderIdentity"] == "b"
    assert s.body["spec"]["leaseTransitions"] == 1
    # First read of the final record at 39; taken once 8 s of silence passed (39 + 8 = 47).
    assert waits == 8


def test_a_fresh_standby_gives_a_lease_it_never_saw_change_a_whole_duration():
    # Judged by its own clock, never by the renewTime another machine wrote (clock skew).
    lease = stored(step(None, "a", 0, wall=0.0).body, "1")
    s = step(lease, "b", 1000, None)
    assert s.action == "wait"
    assert step(lease, "b", 1007.9, s.seen).action == "wait"
    assert step(lease, "b", 1008, s.seen).action == "take"


def test_a_released_lease_is_taken_at_once():
    lease = stored(step(None, "a", 0).body, "1")
    free = stored(released(lease, "a", 1002.0), "2")
    assert free["spec"]["holderIdentity"] == ""
    assert step(free, "b", 3).action == "take"
    # Only the holder releases.
    assert released(lease, "b", 1002.0) is None


def test_leader_that_reads_another_holder_must_not_go_on():
    lease = stored(step(None, "b", 0).body, "9")
    assert step(lease, "a", 1).action == "wait"  # the Elector exits the process on this


@pytest.mark.parametrize(
    ("renew", "deadline", "duration"),
    [(2, 5, 5), (5, 5, 8), (3, 2, 8), (2, 9, 8)],
)
def test_settings_refuse_lease_timings_that_could_overlap_two_leaders(renew, deadline, duration):
    with pytest.raises(ValueError, match="COURSEHUB_LEASE_RENEW_SECONDS < COURSEHUB_LEASE_RENEW_DEADLINE"):
        Settings(lease_renew=renew, lease_renew_deadline=deadline, lease_duration=duration)


def test_default_lease_timing_fits_the_failover_budget():
    s = Settings()
    assert s.lease_renew < s.lease_renew_deadline < s.lease_duration
    # A standby takes over at most duration + retry after the last renewal it saw.
    assert s.lease_duration + s.lease_retry <= 10


# -- namespace claims -----------------------------------------------------------------
def claim(lease, shard, now, seen=None, ns="jupyter"):
    return claim_step(
        lease,
        shard=shard,
        namespace=ns,
        lease_ns="ops",
        duration=8.0,
        now=now,
        wall=5000.0 + now,
        seen=seen or {},
    )


def claims_of(body: dict) -> dict:
    return json.loads(body["metadata"]["annotations"][CLAIMS_ANNOTATION])


def test_a_lone_shard_claims_and_serves_its_namespace():
    s = claim(None, "a", 0)
    assert s.create and s.serve and s.others == ()
    assert s.body["metadata"]["name"] == "coursehub-namespace-jupyter"
    assert s.body["metadata"]["namespace"] == "ops"
    assert s.body["spec"]["holderIdentity"] == "a" and set(claims_of(s.body)) == {"a"}
    again = claim(stored(s.body, "1"), "a", 2)
    assert not again.create and again.serve and again.body["metadata"]["resourceVersion"] == "1"


def test_two_shards_on_one_namespace_neither_serves_and_both_name_the_other():
    a = claim(None, "a", 0)
    lease = stored(a.body, "1")
    b = claim(lease, "b", 1)
    assert not b.serve and b.others == ("a",)
    assert set(claims_of(b.body)) == {"a", "b"}
    lease = stored(b.body, "2")
    a2 = claim(lease, "a", 2, a.seen)
    assert not a2.serve and a2.others == ("b",)
    assert a2.body["spec"]["holderIdentity"] == ""  # nobody serves it
    # Never both serving, whatever the order of their renewals.
    assert not (a2.serve and b.serve)


def test_a_claim_that_stops_changing_goes_stale_and_the_other_shard_serves_again():
    lease = stored(claim(None, "a", 0).body, "1")
    b = claim(lease, "b", 1)
    lease = stored(b.body, "2")
    seen: dict = {}
    # b was reconfigured without the namespace at t=1: its claim never changes again.
    t = 2.0
    while not (s := claim(lease, "a", t, seen)).serve:
        assert s.others == ("b",)
        seen, lease = s.seen, stored(s.body, str(int(t) + 3))
        t += 2
    assert s.others == () and set(claims_of(s.body)) == {"a"}
    assert s.body["spec"]["holderIdentity"] == "a"
    assert t - 2 < 2 + 8 + 2  # within one duration (plus a renew) of first seeing b's last claim


def test_a_changing_claim_of_another_shard_stays_fresh():
    lease = stored(claim(None, "a", 0).body, "1")
    seen_a: dict = {}
    for t in range(1, 60, 2):
        b = claim(lease, "b", t)
        lease = stored(b.body, str(t * 2))
        a = claim(lease, "a", t + 1, seen_a)
        seen_a, lease = a.seen, stored(a.body, str(t * 2 + 1))
        assert not a.serve and not b.serve


def test_overlapping_shards_are_named_with_the_namespace():
    assert overlapping_namespaces({"a": ["x", "y"], "b": ["z"]}) == {}
    assert overlapping_namespaces({"a": ["x", "y"], "b": ["y"], "c": ["y", "x"]}) == {
        "x": ("a", "c"),
        "y": ("a", "b", "c"),
    }
    msg = conflict_message("y", ["b", "a"])
    assert "namespace y is claimed by shards a and b" in msg and "shards[].namespaces" in msg
    assert conflict_message("y", ["b", "a"]) == conflict_message("y", ["a", "b"])  # both shards agree


def test_conflict_status_keeps_every_other_field_and_condition():
    status = {
        "observedGeneration": 3,
        "url": "https://x/",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "ok",
                "lastTransitionTime": "t0",
            },
            {
                "type": "ReleaseDeployed",
                "status": "True",
                "reason": "Deployed",
                "message": "",
                "lastTransitionTime": "t",
            },
        ],
    }
    msg = conflict_message("x", ["a", "b"])
    new = conflict_status(status, msg)
    assert new["observedGeneration"] == 3 and new["url"] == "https://x/"
    ready = next(c for c in new["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", SHARD_CONFLICT, msg)
    assert ready["lastTransitionTime"] != "t0"
    assert any(c["type"] == "ReleaseDeployed" for c in new["conditions"])
    # Written once: the second shard finds it already said.
    assert conflict_status(new, msg) is None
