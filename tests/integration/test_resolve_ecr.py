"""Resolution of ECR images through describe_images, against moto's server over HTTP.

Uses the ECR part's fixtures (tests/fixtures/ecr.py): ``ecr_endpoint`` (moto) and
``ecr_proxy`` (forwards to moto, counts calls, injects ECR errors).
"""

import socket

import botocore.exceptions
import pytest

from coursehub.registry import RegistryPolicy, ResolveError, parse_reference, resolve_image
from coursehub.registry.ecr import ENDPOINT_ENV, map_ecr_error, resolve_ecr
from coursehub_dev.waiting import free_port
from fixtures.ecr import ECR_HOST, create_repository, put_image


@pytest.fixture
def ecr_repo(ecr_endpoint, unique_repo):
    name = unique_repo.replace("courses/", "ol-course-notebooks-")
    create_repository(ecr_endpoint, name)
    return name


async def resolve_error(ref: str, **kwargs) -> ResolveError:
    with pytest.raises(ResolveError) as caught:
        await resolve_image(ref, **kwargs)
    return caught.value


async def test_tag_resolves(ecr_endpoint, ecr_repo):
    digest = put_image(ecr_endpoint, ecr_repo, "uai_source-uai.1", seed="build 1")
    resolved = await resolve_image(f"{ECR_HOST}/{ecr_repo}:uai_source-uai.1", ecr_endpoint_url=ecr_endpoint)
    assert resolved.digest == digest
    assert resolved.pinned == f"{ECR_HOST}/{ecr_repo}@{digest}"


async def test_moved_tag(ecr_endpoint, ecr_repo):
    ref = f"{ECR_HOST}/{ecr_repo}:mitxt-6.3710.3x"
    first = put_image(ecr_endpoint, ecr_repo, "mitxt-6.3710.3x", seed="build 1")
    assert (await resolve_image(ref, ecr_endpoint_url=ecr_endpoint)).digest == first
    second = put_image(ecr_endpoint, ecr_repo, "mitxt-6.3710.3x", seed="build 2")
    assert second != first
    assert (await resolve_image(ref, ecr_endpoint_url=ecr_endpoint)).digest == second


async def test_digest_reference_is_verified(ecr_endpoint, ecr_repo):
    digest = put_image(ecr_endpoint, ecr_repo, "v1", seed="pinned")
    resolved = await resolve_image(f"{ECR_HOST}/{ecr_repo}@{digest}", ecr_endpoint_url=ecr_endpoint)
    assert resolved.digest == digest
    error = await resolve_error(f"{ECR_HOST}/{ecr_repo}@sha256:{'0' * 64}", ecr_endpoint_url=ecr_endpoint)
    assert error.reason == "ImageNotFound"


async def test_unknown_tag(ecr_endpoint, ecr_repo):
    put_image(ecr_endpoint, ecr_repo, "v1")
    error = await resolve_error(f"{ECR_HOST}/{ecr_repo}:v2", ecr_endpoint_url=ecr_endpoint)
    assert error.reason == "ImageNotFound"
    assert error.message == f"tag 'v2' not found in {ECR_HOST}/{ecr_repo}; push it or fix spec.image"


async def test_unknown_repository(ecr_endpoint):
    error = await resolve_error(f"{ECR_HOST}/no-such-repo:v1", ecr_endpoint_url=ecr_endpoint)
    assert error.reason == "ImageNotFound"
    assert "ECR repository 'no-such-repo' not found" in error.message


async def test_endpoint_from_environment(ecr_endpoint, ecr_repo, monkeypatch):
    digest = put_image(ecr_endpoint, ecr_repo, "v1")
    monkeypatch.setenv(ENDPOINT_ENV, ecr_endpoint)
    assert (await resolve_image(f"{ECR_HOST}/{ecr_repo}:v1")).digest == digest


async def test_access_denied(ecr_proxy, ecr_endpoint, ecr_repo):
    put_image(ecr_endpoint, ecr_repo, "v1")
    ecr_proxy.fail("DescribeImages", "AccessDeniedException")
    error = await resolve_error(f"{ECR_HOST}/{ecr_repo}:v1", ecr_endpoint_url=ecr_proxy.url)
    assert error.reason == "RegistryUnauthorized"
    assert "ecr:DescribeImages" in error.message
    # Not a transient error: asked once, not retried.
    assert ecr_proxy.counts["DescribeImages"] == 1


async def test_throttling_is_retried(ecr_proxy, ecr_endpoint, ecr_repo):
    digest = put_image(ecr_endpoint, ecr_repo, "v1")
    ecr_proxy.fail("DescribeImages", "ThrottlingException", times=1)
    resolved = await resolve_image(f"{ECR_HOST}/{ecr_repo}:v1", ecr_endpoint_url=ecr_proxy.url)
    assert resolved.digest == digest
    assert ecr_proxy.counts["DescribeImages"] == 2


async def test_unreachable_endpoint(ecr_endpoint):
    # A loopback port nobody listens on: connections are refused at once.
    closed_port = free_port()
    ref = parse_reference(f"{ECR_HOST}/ol-course-notebooks:v1")
    with pytest.raises(ResolveError) as caught:
        await resolve_ecr(ref, endpoint_url=f"http://127.0.0.1:{closed_port}", max_attempts=1)
    assert caught.value.reason == "RegistryUnreachable"
    assert f"127.0.0.1:{closed_port}" in caught.value.message


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("AccessDeniedException", "RegistryUnauthorized"),
        ("UnrecognizedClientException", "RegistryUnauthorized"),
        ("ExpiredTokenException", "RegistryUnauthorized"),
        ("ImageNotFoundException", "ImageNotFound"),
        ("RepositoryNotFoundException", "ImageNotFound"),
        ("ThrottlingException", "RegistryError"),
        ("ServerException", "RegistryError"),
    ],
)
def test_error_mapping(code, reason):
    error = botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "m"}}, "DescribeImages")
    assert map_ecr_error(error, parse_reference(f"{ECR_HOST}/r:t"), "endpoint").reason == reason


def test_missing_credentials_mapping():
    mapped = map_ecr_error(
        botocore.exceptions.NoCredentialsError(),
        parse_reference(f"{ECR_HOST}/r:t"),
        "endpoint",
    )
    assert mapped.reason == "RegistryUnauthorized"
    assert "IRSA" in mapped.message


async def test_silent_ecr_endpoint_hits_the_resolution_deadline():
    # Accepts connections and never answers: boto3's own timeouts and retries would take ~30 s.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        error = await resolve_error(
            f"{ECR_HOST}/ol-course-notebooks:v1", ecr_endpoint_url=endpoint, policy=RegistryPolicy(deadline=1)
        )
    assert error.reason == "RegistryUnreachable"
    assert "did not finish within 1s" in error.message
