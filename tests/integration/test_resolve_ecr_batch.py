"""ECR resolution in batches: describe_images with up to 100 image ids per call, counted
against moto's server (tests/fixtures/ecr.py: ``ecr_proxy`` counts calls by operation)."""

from __future__ import annotations

import asyncio

import pytest

from coursehub.api.courseimage import CourseImageSpec
from coursehub.desired.courses import CourseRecord
from coursehub.reconcile.resolver import Resolver
from coursehub.registry import parse_reference, resolve_ecr_batch
from coursehub.settings import Settings
from coursehub.state import Index
from fixtures.ecr import ECR_HOST, create_repository, put_image


@pytest.fixture
def ecr_repo(ecr_endpoint, unique_repo):
    name = unique_repo.replace("courses/", "ol-batch-")
    create_repository(ecr_endpoint, name)
    return name


def push(endpoint: str, repo: str, n: int) -> dict[str, str]:
    return {f"c{i}": put_image(endpoint, repo, f"c{i}", seed=f"{repo} {i}") for i in range(n)}


async def test_250_tags_in_one_repository_take_3_calls(ecr_endpoint, ecr_proxy, ecr_repo):
    digests = push(ecr_endpoint, ecr_repo, 250)
    refs = [parse_reference(f"{ECR_HOST}/{ecr_repo}:{tag}") for tag in digests]
    ecr_proxy.clear()
    result = await resolve_ecr_batch(refs, endpoint_url=ecr_proxy.url)
    assert {r.tag: d for r, d in result.digests.items()} == digests
    assert not result.errors
    assert result.calls == 3 and ecr_proxy.counts["DescribeImages"] == 3


async def test_a_missing_tag_fails_alone_for_a_few_extra_calls(ecr_endpoint, ecr_proxy, ecr_repo):
    digests = push(ecr_endpoint, ecr_repo, 100)
    refs = [parse_reference(f"{ECR_HOST}/{ecr_repo}:{tag}") for tag in [*digests, "missing"]]
    # a digest reference in the same chunk is verified, not looked up by tag
    pinned = parse_reference(f"{ECR_HOST}/{ecr_repo}@{digests['c7']}")
    ecr_proxy.clear()
    result = await resolve_ecr_batch([*refs, pinned], endpoint_url=ecr_proxy.url)
    assert len(result.digests) == 101 and result.digests[pinned] == digests["c7"]
    [(missing, error)] = result.errors.items()
    assert missing.tag == "missing" and error.reason == "ImageNotFound"
    assert error.message == f"tag 'missing' not found in {ECR_HOST}/{ecr_repo}; push it or fix spec.image"
    # 2 chunks (100 + 2), the one with the missing tag halved until it stands alone
    assert ecr_proxy.counts["DescribeImages"] <= 2 + 2 * 7


async def test_access_denied_is_every_course_s_own_error(ecr_endpoint, ecr_proxy, ecr_repo):
    push(ecr_endpoint, ecr_repo, 3)
    ecr_proxy.fail("DescribeImages", "AccessDeniedException")
    refs = [parse_reference(f"{ECR_HOST}/{ecr_repo}:c{i}") for i in range(3)]
    result = await resolve_ecr_batch(refs, endpoint_url=ecr_proxy.url)
    assert {e.reason for e in result.errors.values()} == {"RegistryUnauthorized"} and len(result.errors) == 3
    assert ecr_proxy.counts["DescribeImages"] == 1  # one call for all three, not retried


async def test_the_resolver_batches_a_due_round_of_courses(ecr_endpoint, ecr_proxy, ecr_repo):
    """The operator's own path: workers hand ECR courses to one batcher."""
    digests = push(ecr_endpoint, ecr_repo, 150)
    idx = Index()
    for tag in digests:
        spec = CourseImageSpec(course=tag, image=f"{ECR_HOST}/{ecr_repo}:{tag}")
        idx.courses[("jupyter", tag)] = CourseRecord("jupyter", tag, "u", "2026-01-01T00:00:00Z", 1, (), spec)
    # No Kubernetes client: new courses need no pull secret and post no Event.
    resolver = Resolver(None, idx, Settings(aws_endpoint_url=ecr_proxy.url))  # type: ignore[arg-type]
    ecr_proxy.clear()
    task = asyncio.create_task(resolver.run())
    try:
        for key in idx.courses:
            resolver.schedule(key)
        async with asyncio.timeout(60):
            while len(idx.resolutions) < len(digests):
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert {k[1]: r.digest for k, r in idx.resolutions.items()} == digests
    assert ecr_proxy.counts["DescribeImages"] <= 3  # 150 courses: 2 calls, 3 if a round was split
