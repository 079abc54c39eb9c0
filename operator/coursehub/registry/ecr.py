"""Resolve images in private Amazon ECR registries with ``describe_images``.

ECR is asked through its own API rather than the distribution API because the
operator already has AWS credentials (IRSA) and needs no docker login token.
boto3 is synchronous, so each call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
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

__all__ = [
    "BATCH_SIZE",
    "ENDPOINT_ENV",
    "EcrBatch",
    "ecr_client",
    "map_ecr_error",
    "resolve_ecr",
    "resolve_ecr_batch",
]


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
    # One home for the call, its error messages and the digest check: a batch of one.
    batch = await resolve_ecr_batch(
        [ref],
        endpoint_url=endpoint_url,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_attempts=max_attempts,
    )
    if ref in batch.errors:
        raise batch.errors[ref]
    return batch.digests[ref]


# describe_images takes at most 100 image ids per call.
BATCH_SIZE = 100


@dataclass
class EcrBatch:
    """The outcome of resolving many references: one digest or one error per reference, and the
    number of describe_images calls it took."""

    digests: dict[ImageReference, str] = field(default_factory=dict)
    errors: dict[ImageReference, ResolveError] = field(default_factory=dict)
    calls: int = 0


def _image_id(ref: ImageReference) -> dict[str, str]:
    return {"imageDigest": ref.digest} if ref.digest else {"imageTag": ref.tag or "latest"}


def _match(details: list[dict], ref: ImageReference) -> str | None:
    want = _image_id(ref)
    for d in details:
        if "imageDigest" in want and d.get("imageDigest") == want["imageDigest"]:
            return str(d["imageDigest"])
        if "imageTag" in want and want["imageTag"] in (d.get("imageTags") or []):
            return str(d["imageDigest"])
    return None


async def resolve_ecr_batch(
    refs: Sequence[ImageReference],
    *,
    endpoint_url: str | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 10.0,
    max_attempts: int = 3,
) -> EcrBatch:
    """Resolve many ECR references with as few describe_images calls as possible.

    References are grouped by registry and repository and asked in chunks of up to 100 image
    ids per call. ECR refuses a whole call when one id is missing (ImageNotFoundException), so
    such a chunk is split in halves until the missing ones stand alone: a missing image costs
    about log2(100) extra calls, and every other reference still resolves. Any other error
    applies to every reference of its chunk, with the same messages as `resolve_ecr`.
    """
    out = EcrBatch()
    endpoint = _endpoint(endpoint_url)
    groups: dict[tuple[str, str], list[ImageReference]] = {}
    for ref in dict.fromkeys(refs):  # de-duplicated, order kept
        if parse_ecr_host(ref.registry) is None:
            out.errors[ref] = InvalidImageReference(f"{ref.registry!r} is not an ECR registry host")
            continue
        groups.setdefault((ref.registry, ref.repository), []).append(ref)

    def call(client: Any, account: str, repository: str, chunk: list[ImageReference]) -> list[dict]:
        out.calls += 1  # counted before the call: a refused call is a call too
        ids = list({tuple(sorted(_image_id(r).items())): _image_id(r) for r in chunk}.values())
        response = client.describe_images(registryId=account, repositoryName=repository, imageIds=ids)
        return list(response.get("imageDetails") or [])

    def work(registry: str, repository: str, chunk: list[ImageReference]) -> None:
        account, region = parse_ecr_host(registry)  # type: ignore[misc]
        shown = endpoint or f"ecr.{region} (AWS)"
        client = ecr_client(
            region,
            endpoint,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
        )
        pending = [chunk]
        while pending:
            part = pending.pop()
            try:
                details = call(client, account, repository, part)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                code = classify(exc).code
                if code == "ImageNotFoundException" and len(part) > 1:
                    half = len(part) // 2
                    pending += [part[half:], part[:half]]
                    continue
                for ref in part:
                    out.errors[ref] = map_ecr_error(exc, ref, shown)
                continue
            for ref in part:
                digest = _match(details, ref)
                if digest is None:
                    out.errors[ref] = map_ecr_error(_not_found(), ref, shown)
                elif ref.digest and digest != ref.digest:
                    out.errors[ref] = RegistryError(
                        f"ECR returned {digest} when asked for {ref.digest} in {ref.name}"
                    )
                else:
                    out.digests[ref] = digest

    chunks = [
        (registry, repository, group[i : i + BATCH_SIZE])
        for (registry, repository), group in groups.items()
        for i in range(0, len(group), BATCH_SIZE)
    ]
    # One thread per chunk at a time (boto3 is synchronous); chunks of one round run in turn.
    for registry, repository, chunk in chunks:
        await asyncio.to_thread(work, registry, repository, chunk)
    return out


def _not_found() -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": "ImageNotFoundException", "Message": "no image details returned"}},
        "DescribeImages",
    )
