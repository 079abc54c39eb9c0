"""How the operator configures kopf and the interpreter (operator_main)."""

from __future__ import annotations

import gc

import kopf

from coursehub.operator_main import GC_YOUNG_THRESHOLD, NoDiffBase, build_registry, configure_kopf, tune_gc


def test_no_handler_needs_kopf_s_change_detection():
    # NoDiffBase turns kopf's diffs off (they cost ~15% of the operator's CPU in a burst): a
    # change, resume or deletion handler, or a daemon or timer, would then never see a change.
    for watch_namespaces, namespaces in ((True, ()), (False, ("a", "b"))):
        registry = build_registry(watch_namespaces=watch_namespaces, namespaces=namespaces)
        assert registry._changing.get_all_handlers() == []
        assert registry._spawning.get_all_handlers() == []
        assert registry._watching.get_all_handlers()  # the event handlers are all there is


def test_listed_namespaces_are_watched_without_kopf_s_namespace_scanning():
    # With scanning, kopf drops a listed namespace whose deletion has begun and whose
    # conditions are all False, and adds none that is terminating at start: a hub's deletion
    # there would never arrive, and its finalizer would hold the namespace for ever.
    listed, everywhere = kopf.OperatorSettings(), kopf.OperatorSettings()
    configure_kopf(listed, listed_namespaces=True)
    configure_kopf(everywhere, listed_namespaces=False)
    assert listed.scanning.disabled is True
    assert everywhere.scanning.disabled is False  # one cluster-wide watch; CRDs still noticed
    assert isinstance(listed.persistence.diffbase_storage, NoDiffBase)


def test_the_diff_base_is_empty_and_never_stored():
    body = kopf.Body({"metadata": {"name": "c1", "labels": {"a": "b"}}, "spec": {"course": "c1"}})
    storage = NoDiffBase()
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=kopf.BodyEssence({"spec": {}}))
    assert not patch


def test_gc_collects_less_often_and_leaves_what_was_imported_alone():
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
