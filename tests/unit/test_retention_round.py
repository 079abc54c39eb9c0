"""The ECR retention loop turns a course it cannot handle into that course's status, and goes on."""

from __future__ import annotations

import asyncio

from coursehub.api.courseimage import CourseImageSpec
from coursehub.desired.courses import CourseRecord
from coursehub.reconcile.retention import EcrRetention
from coursehub.settings import Settings
from coursehub.state import Index


def course(name: str, image: str) -> CourseRecord:
    # model_copy(update=...) skips validation: an object stored under an older CRD whose
    # pattern let this image through.
    spec = CourseImageSpec(course=name, image="r.example.edu/x:1").model_copy(update={"image": image})
    return CourseRecord("jupyter", name, f"u-{name}", "2026-01-01T00:00:00Z", 1, (), spec)


def test_an_unparseable_image_is_that_course_s_retention_status_and_the_round_completes():
    idx = Index()
    bad = course("bad", "ex.com:99999/x:1")
    other = course("other", "r.example.edu/courses/nb:1")  # not ECR: no policy, no AWS call
    idx.courses = {bad.key: bad, other.key: other}
    retention = EcrRetention(idx, Settings(ecr_lifecycle=True))
    asyncio.run(retention.round())
    result = idx.retention[bad.key]
    assert (result.ok, result.reason) == (False, "InvalidImageReference")
    assert "99999" in result.message
    assert other.key not in idx.retention
    assert bad.key in idx.status_dirty  # the status writer reports it
