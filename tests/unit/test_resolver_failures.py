"""The resolver turns a course it cannot resolve into that course's ImageResolved condition."""

from __future__ import annotations

import asyncio

from coursehub.api.courseimage import CourseImageSpec
from coursehub.desired.courses import CourseRecord
from coursehub.desired.status import course_status
from coursehub.reconcile.resolver import Resolver
from coursehub.settings import Settings
from coursehub.state import Index


def test_an_unparseable_image_becomes_the_course_s_status_without_any_request():
    # model_copy(update=...) skips validation, as an object stored under an older CRD would.
    spec = CourseImageSpec(course="c1", image="r.example.edu/x:1").model_copy(
        update={"image": "ex.com:99999/x:1"}
    )
    c = CourseRecord("jupyter", "c1", "u", "2026-01-01T00:00:00Z", 1, (), spec)
    idx = Index()
    idx.courses[c.key] = c
    # No Kubernetes client: nothing here may need one (no pull secret, no Event).
    resolver = Resolver(None, idx, Settings())  # type: ignore[arg-type]
    asyncio.run(resolver.resolve_one(c.key))
    res = idx.resolutions[c.key]
    assert (res.ok, res.reason) == (False, "InvalidImageReference")
    assert c.key in idx.status_dirty
    _fields, conds = course_status(c, res, [], None)
    resolved = next(x for x in conds if x.type == "ImageResolved")
    assert resolved.status is False and "ex.com:99999/x:1" in resolved.message
