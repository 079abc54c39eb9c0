"""Resolution of ECR images through describe_images, against moto's server over HTTP."""

import hashlib
import json
import socket

import boto3
import botocore.exceptions
import pytest

from coursehub.registry import ResolveError, parse_reference, resolve_image
from coursehub.registry.ecr import ENDPOINT_ENV, map_ecr_error, resolve_ecr

# moto's default account; ECR checks that registryId matches the repository's.
ACCOUNT = "123456789012"
REGION = "us-east-1"
HOST = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"


def manifest(seed: str) -> str:
    config = json.dumps({"seed": seed}).encode()
    layer = hashlib.sha256(f"layer {seed}".encode()).hexdigest()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": 1,
                    "digest": f"sha256:{layer}",
                }
            ],
        }
    )


@pytest.fixture
def ecr(moto_ecr_endpoint):
    return boto3.client("ecr", region_name=REGION, endpoint_url=moto_ecr_endpoint)


@pytest.fixture
def ecr_repo(ecr, unique_repo):
    name = unique_repo.replace("courses/", "ol-course-notebooks-")
    ecr.create_repository(repositoryName=name)
    return name


def put(ecr, repo: str, tag: str, seed: str) -> str:
    return ecr.put_image(repositoryName=repo, imageManifest=manifest(seed), imageTag=tag)["image"]["imageId"][
        "imageDigest"
    ]


async def test_tag_resolves(ecr, ecr_repo, moto_ecr_endpoint):
    digest = put(ecr, ecr_repo, "uai_source-uai.1", "build 1")
    resolved = await resolve_image(f"{HOST}/{ecr_repo}:uai_source-uai.1", ecr_endpoint_url=moto_ecr_endpoint)
    assert resolved.digest == digest
    assert resolved.pinned == f"{HOST}/{ecr_repo}@{digest}"


async def test_moved_tag(ecr, ecr_repo, moto_ecr_endpoint):
    ref = f"{HOST}/{ecr_repo}:mitxt-6.3710.3x"
    first = put(ecr, ecr_repo, "mitxt-6.3710.3x", "build 1")
    assert (await resolve_image(ref, ecr_endpoint_url=moto_ecr_endpoint)).digest == first
    second = put(ecr, ecr_repo, "mitxt-6.3710.3x", "build 2")
    assert second != first
    assert (await resolve_image(ref, ecr_endpoint_url=moto_ecr_endpoint)).digest == second


async def test_digest_reference_is_verified(ecr, ecr_repo, moto_ecr_endpoint):
    digest = put(ecr, ecr_repo, "v1", "pinned")
    resolved = await resolve_image(f"{HOST}/{ecr_repo}@{digest}", ecr_endpoint_url=moto_ecr_endpoint)
    assert resolved.digest == digest
    with pytest.raises(ResolveError) as caught:
        await resolve_image(f"{HOST}/{ecr_repo}@sha256:{'0' * 64}", ecr_endpoint_url=moto_ecr_endpoint)
    assert caught.value.reason == "ImageNotFound"


async def test_unknown_tag(ecr, ecr_repo, moto_ecr_endpoint):
    put(ecr, ecr_repo, "v1", "exists")
    with pytest.raises(ResolveError) as caught:
        await resolve_image(f"{HOST}/{ecr_repo}:v2", ecr_endpoint_url=moto_ecr_endpoint)
    assert caught.value.reason == "ImageNotFound"
    assert caught.value.message == f"tag 'v2' not found in {HOST}/{ecr_repo}; push it or fix spec.image"


async def test_unknown_repository(moto_ecr_endpoint):
    with pytest.raises(ResolveError) as caught:
        await resolve_image(f"{HOST}/no-such-repo:v1", ecr_endpoint_url=moto_ecr_endpoint)
    assert caught.value.reason == "ImageNotFound"
    assert "ECR repository 'no-such-repo' not found" in caught.value.message


async def test_endpoint_from_environment(ecr, ecr_repo, moto_ecr_endpoint, monkeypatch):
    digest = put(ecr, ecr_repo, "v1", "env")
    monkeypatch.setenv(ENDPOINT_ENV, moto_ecr_endpoint)
    assert (await resolve_image(f"{HOST}/{ecr_repo}:v1")).digest == digest


async def test_unreachable_endpoint(moto_ecr_endpoint):
    # A loopback port nobody listens on: connections are refused at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    ref = parse_reference(f"{HOST}/ol-course-notebooks:v1")
    with pytest.raises(ResolveError) as caught:
        await resolve_ecr(ref, endpoint_url=f"http://127.0.0.1:{closed_port}", max_attempts=1)
    assert caught.value.reason == "RegistryUnreachable"
    assert f"127.0.0.1:{closed_port}" in caught.value.message


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("AccessDeniedException", "RegistryUnauthorized"),
        ("UnrecognizedClientException", "RegistryUnauthorized"),
        ("ImageNotFoundException", "ImageNotFound"),
        ("RepositoryNotFoundException", "ImageNotFound"),
        ("ThrottlingException", "RegistryError"),
    ],
)
def test_error_mapping(code, reason):
    # moto does not enforce IAM by default, so denial is checked on botocore's own error type.
    error = botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "m"}}, "DescribeImages")
    mapped = map_ecr_error(error, parse_reference(f"{HOST}/r:t"), "endpoint")
    assert mapped.reason == reason


def test_missing_credentials_mapping():
    mapped = map_ecr_error(botocore.exceptions.NoCredentialsError(), parse_reference(f"{HOST}/r:t"), "endpoint")
    assert mapped.reason == "RegistryUnauthorized"
    assert "IRSA" in mapped.message
