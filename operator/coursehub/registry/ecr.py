"""Resolve images in private Amazon ECR registries with ``describe_images``.

ECR is asked through its own API rather than the distribution API because the
operator already has AWS credentials (IRSA) and needs no docker login token.
boto3 is synchronous, so each call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import botocore.exceptions

from .aws import ENDPOINT_ENV, classify, ecr_client
from .aws import endpoint_url as _endpoint
from .errors import (
    ImageNotFound,
    InvalidImageReference,
    RegistryError,
    RegistryUnauthorized,
    RegistryUnreachable,
    ResolveError,
)
from .reference import ImageReference, parse_ecr_host

__all__ = ["ENDPOINT_ENV", "ecr_client", "map_ecr_error", "resolve_ecr"]


def map_ecr_error(exc: BaseException, ref: ImageReference, endpoint: str) -> ResolveError:
    """Turn a botocore exception into a ``ResolveError`` for ``ref``."""
    what = f"digest {ref.digest}" if ref.digest else f"tag {ref.tag!r}"
    failure = classify(exc)
    code, detail = failure.code, failure.detail
    if failure.kind == "not_found":
        if code == "RepositoryNotFoundException":
            return ImageNotFound(
                f"ECR repository {ref.repository!r} not found in {ref.registry}; "
                "create it and push the image, or fix spec.image"
            )
        return ImageNotFound(f"{what} not found in {ref.name}; push it or fix spec.image")
    if failure.kind == "access":
        return RegistryUnauthorized(
            f"AWS refused ecr:DescribeImages on {ref.name} ({code}: {detail}); give the "
            "operator's role (IRSA) ecr:DescribeImages on this repository"
        )
    if failure.kind == "no_credentials":
        return RegistryUnauthorized(
            f"the operator has no AWS credentials to look up {ref.name}; configure IRSA or "
            "another source of the standard AWS credential chain"
        )
    if failure.kind == "unreachable":
        return RegistryUnreachable(f"cannot reach the ECR API at {endpoint} ({exc}); it will be retried")
    if isinstance(exc, botocore.exceptions.ClientError):
        return RegistryError(f"ECR describe_images for {ref.name} failed ({code}: {detail})")
    return RegistryError(f"ECR lookup of {ref.name} failed: {exc}")


def _describe(client: Any, account: str, ref: ImageReference) -> str:
    image_id = {"imageDigest": ref.digest} if ref.digest else {"imageTag": ref.tag or "latest"}
    response = client.describe_images(registryId=account, repositoryName=ref.repository, imageIds=[image_id])
    details = response.get("imageDetails") or []
    if not details:
        raise botocore.exceptions.ClientError(
            {
                "Error": {
                    "Code": "ImageNotFoundException",
                    "Message": "no image details returned",
                }
            },
            "DescribeImages",
        )
    return str(details[0]["imageDigest"])


async def resolve_ecr(
    ref: ImageReference,
    *,
    endpoint_url: str | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 10.0,
    max_attempts: int = 3,
) -> str:
    """Return the ``sha256:`` digest of ``ref`` in its ECR repository.

    ``endpoint_url`` (else ``$COURSEHUB_AWS_ENDPOINT_URL``, else AWS) picks the
    API endpoint; ``max_attempts`` counts every try of the call. A reference with a
    digest is checked to exist in ECR.
    """
    parsed = parse_ecr_host(ref.registry)
    if parsed is None:
        raise InvalidImageReference(f"{ref.registry!r} is not an ECR registry host")
    account, region = parsed
    endpoint = _endpoint(endpoint_url)
    shown = endpoint or f"ecr.{region} (AWS)"

    def work() -> str:
        client = ecr_client(
            region,
            endpoint,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
        )
        return _describe(client, account, ref)

    try:
        digest = await asyncio.to_thread(work)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise map_ecr_error(exc, ref, shown) from None
    if ref.digest and digest != ref.digest:
        raise RegistryError(f"ECR returned {digest} when asked for {ref.digest} in {ref.name}")
    return digest
