"""A hub's pullers kept from the watch between LISTs (reconcile.puller_cache): what replaces what."""

from coursehub.reconcile.puller_cache import PullerCache, replaces


def ds(name="coursehub-puller", uid="u1", generation=1, ready=0, managed=False) -> dict:
    meta = {"name": name, "uid": uid, "generation": generation}
    if managed:
        meta["managedFields"] = [{"manager": "coursehub"}]
    return {"metadata": meta, "status": {"observedGeneration": generation, "numberReady": ready}}


def test_a_watch_event_from_before_our_apply_never_replaces_its_answer():
    cache = PullerCache(max_age=60)
    cache.note(ds(generation=2), from_watch=False)  # the apply's answer
    cache.note(ds(generation=1, ready=3), from_watch=True)  # the watch catching up
    assert cache.bodies["coursehub-puller"]["metadata"]["generation"] == 2


def test_at_one_generation_the_watch_wins_and_an_answer_does_not():
    kept = ds(generation=2, ready=3)
    assert replaces(kept, ds(generation=2, ready=5), from_watch=True)
    assert not replaces(kept, ds(generation=2, ready=0), from_watch=False)
    assert replaces(kept, ds(generation=3), from_watch=False)


def test_a_re_created_puller_replaces_the_old_one_and_the_old_one_s_deletion_keeps_it():
    cache = PullerCache(max_age=60)
    cache.note(ds(uid="old", generation=7), from_watch=True)
    cache.note(ds(uid="new", generation=1), from_watch=False)
    assert cache.bodies["coursehub-puller"]["metadata"]["uid"] == "new"
    cache.note_deleted(ds(uid="old", generation=7))
    assert cache.bodies["coursehub-puller"]["metadata"]["uid"] == "new"
    cache.note_deleted(ds(uid="new"))
    assert cache.bodies == {}


def test_a_list_keeps_what_the_watch_brought_after_it_began():
    cache = PullerCache(max_age=60)
    cache.note(ds("coursehub-puller", generation=1), from_watch=True)
    cache.note(ds("coursehub-puller-1", generation=1), from_watch=True)
    mark = cache.list_begins()
    # While the LIST is on its way: one puller rolls out, another is deleted.
    cache.note(ds("coursehub-puller", generation=1, ready=3), from_watch=True)
    cache.note_deleted(ds("coursehub-puller-1"))
    listed = [
        ds("coursehub-puller", generation=1, ready=0),
        ds("coursehub-puller-1"),
        ds("coursehub-puller-2"),
    ]
    cache.listed(listed, mark, now=100.0)
    assert cache.bodies["coursehub-puller"]["status"]["numberReady"] == 3
    assert "coursehub-puller-1" not in cache.bodies
    assert "coursehub-puller-2" in cache.bodies  # untouched since the mark: the LIST's answer


def test_a_list_drops_what_it_no_longer_finds_and_is_needed_again_when_old_or_forgotten():
    cache = PullerCache(max_age=60)
    assert cache.needs_list(now=0.0)
    cache.note(ds("coursehub-puller-3"), from_watch=True)
    cache.listed([ds("coursehub-puller", managed=True)], cache.list_begins(), now=10.0)
    assert list(cache.bodies) == ["coursehub-puller"]  # a deletion the watch missed
    assert "managedFields" not in cache.bodies["coursehub-puller"]["metadata"]
    assert not cache.needs_list(now=69.9)
    assert cache.needs_list(now=70.0)
    cache.listed([], cache.list_begins(), now=70.0)
    cache.forget()
    assert cache.needs_list(now=70.1)


def test_our_own_deletion_drops_it_at_once():
    cache = PullerCache(max_age=60)
    cache.note(ds("coursehub-puller-1"), from_watch=True)
    cache.dropped("coursehub-puller-1")
    assert cache.bodies == {}
