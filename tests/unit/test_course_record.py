"""What the operator takes from a CourseImage's status after a restart."""

from __future__ import annotations

from coursehub.handlers import course_record, status_image

DIGEST = "sha256:" + "b" * 64


def body(image: str, resolved: str | None) -> dict:
    return {
        "metadata": {"namespace": "jupyter", "name": "c1", "uid": "u", "generation": 2},
        "spec": {"course": "c1", "image": image},
        "status": {"resolvedImage": resolved} if resolved else {},
    }


def test_a_digest_of_spec_images_repository_is_reused():
    rec = course_record(body("r.example.edu/courses/nb:v1", f"r.example.edu/courses/nb@{DIGEST}"), None)
    assert rec is not None and rec.resolved_image == f"r.example.edu/courses/nb@{DIGEST}"


def test_docker_hub_short_names_compare_normalized():
    assert status_image("python:3.12", f"docker.io/library/python@{DIGEST}") == (
        f"docker.io/library/python@{DIGEST}"
    )


def test_an_image_of_another_repository_or_registry_in_status_is_not_served():
    for planted in (
        f"r.example.edu/courses/other@{DIGEST}",
        f"evil.example.com/courses/nb@{DIGEST}",
        "r.example.edu/courses/nb:v1",  # a tag, not a digest
        "not a reference",
        42,
    ):
        assert status_image("r.example.edu/courses/nb:v1", planted) is None, planted
    rec = course_record(body("r.example.edu/courses/nb:v1", f"evil.example.com/courses/nb@{DIGEST}"), None)
    assert rec is not None and rec.resolved_image is None


def test_in_memory_the_last_good_digest_survives_a_spec_edit():
    first = course_record(body("r.example.edu/courses/nb:v1", f"r.example.edu/courses/nb@{DIGEST}"), None)
    edited = course_record(body("r.example.edu/courses/nb:v2", None), first)
    assert edited is not None and edited.resolved_image == first.resolved_image
