"""Image resolution: turn ``spec.image`` into an immutable, digest-pinned reference.

``resolve_image`` dispatches private ECR hosts to ``describe_images`` (boto3)
and every other registry to the OCI distribution API. See docs/registries.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .ecr import EcrBatch, resolve_ecr, resolve_ecr_batch
from .errors import (
    REASONS,
    ImageNotFound,
    InvalidImageReference,
    RegistryError,
    RegistryNotAllowed,
    RegistryUnauthorized,
    RegistryUnreachable,
    ResolveError,
)
from .oci import OciClient, resolve_oci
from .policy import RegistryPolicy
from .reference import (
    COURSE_IMAGE_PATTERN,
    IMAGE_REFERENCE_PATTERN,
    NAME_LENGTH_PATTERN,
    ImageReference,
    parse_ecr_host,
    parse_reference,
    pinned,
)

__all__ = [
    "COURSE_IMAGE_PATTERN",
    "IMAGE_REFERENCE_PATTERN",
    "NAME_LENGTH_PATTERN",
    "REASONS",
    "EcrBatch",
    "ImageNotFound",
    "ImageReference",
    "InvalidImageReference",
    "OciClient",
    "RegistryError",
    "RegistryNotAllowed",
    "RegistryPolicy",
    "RegistryUnauthorized",
    "RegistryUnreachable",
    "ResolveError",
    "ResolvedImage",
    "parse_ecr_host",
    "parse_reference",
    "pinned",
    "resolve_ecr_batch",
    "resolve_image",
]


@dataclass(frozen=True)
class ResolvedImage:
    """The outcome of a resolution: what was asked for and the digest it names now."""

    reference: ImageReference
    digest: str

    @property
    def repository(self) -> str:
        """Fully qualified repository, e.g. ``127.0.0.1:5000/courses``."""
        return self.reference.name

    @property
    def pinned(self) -> str:
        """``repository@sha256:...``: what the allowlist publishes."""
        return pinned(self.reference.name, self.digest)


async def resolve_image(
    ref: str,
    *,
    docker_config: Mapping[str, Any] | None = None,
    ecr_endpoint_url: str | None = None,
    policy: RegistryPolicy | None = None,
    known_digest: str | None = None,
    oci: OciClient | None = None,
) -> ResolvedImage:
    """Resolve ``ref`` (``repo:tag``, ``repo@sha256:...`` or both) to a digest.

    ``docker_config`` is a dockerconfigjson document (the decoded
    ``.dockerconfigjson`` of a pull Secret); ``ecr_endpoint_url`` overrides the
    ECR endpoint. ``policy`` bounds where the OCI resolver goes (default: from the operator
    settings, ``RegistryPolicy.from_settings(settings.current())``). ``known_digest``: the
    digest the tag named last time (an OCI registry may then answer 304 Not Modified). ``oci``:
    a client whose kept-alive connections this resolution may reuse; its policy is then the
    policy (a ``policy`` beside it is refused). Raises ``ResolveError`` with one of ``REASONS``.
    """
    # spec.image's grammar (the CRD's): a tag or a digest is required.
    reference = parse_reference(ref, require_tag_or_digest=True)
    if oci is not None:
        if policy is not None:
            raise TypeError("resolve_image: pass the policy in the OciClient, not beside it")
        policy = oci.policy
    if policy is None:
        from ..settings import current

        policy = RegistryPolicy.from_settings(current())
    if parse_ecr_host(reference.registry) is not None:
        try:
            # The ECR API is AWS's (or the operator's endpoint override), not the author's: the
            # network rules do not apply, the deadline does (boto3's retries alone allow ~45 s).
            async with asyncio.timeout(policy.deadline):
                digest = await resolve_ecr(reference, endpoint_url=ecr_endpoint_url)
        except TimeoutError:
            raise RegistryUnreachable(
                f"looking up {reference.name} in ECR did not finish within {policy.deadline:g}s; "
                "it will be retried"
            ) from None
    else:
        if oci is not None:  # the caller's shared session
            digest = await oci.resolve(reference, docker_config=docker_config, known_digest=known_digest)
        else:  # this resolution's own
            digest = await resolve_oci(
                reference, docker_config=docker_config, policy=policy, known_digest=known_digest
            )
    return ResolvedImage(reference=reference, digest=digest)
