"""Apply ECR lifecycle policies (I/O; the policies come from ``coursehub.desired.lifecycle``).

Synchronous boto3: the operator calls ``apply_lifecycle_policies`` through
``asyncio.to_thread``. Credentials come only from the standard AWS chain (IRSA in
production); the endpoint may be overridden for tests and VPC endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from coursehub.desired.lifecycle import RepositoryPolicy, normalize_policy, policy_text
from coursehub.registry.aws import ENDPOINT_ENV, classify, ecr_client
from coursehub.registry.aws import endpoint_url as default_endpoint
from coursehub.registry.reference import parse_ecr_host  # re-exported: the reference parser owns it

__all__ = [
    "ENDPOINT_ENV",
    "FAILURE_REASONS",
    "LifecycleResult",
    "RepositorySettings",
    "apply_lifecycle_policies",
    "parse_ecr_host",
]

# Reasons a failed result carries (RetentionApplied=False); successes say Applied/Unchanged.
FAILURE_REASONS = frozenset(
    {"RepositoryNotFound", "AccessDenied", "Throttled", "EndpointUnreachable", "RegistryError"}
)


@dataclass(frozen=True)
class RepositorySettings:
    """How a missing repository is created (an operator setting, off by default)."""

    scan_on_push: bool = True
    # MUTABLE because a course's tag moves with each build.
    tag_mutability: str = "MUTABLE"
    encryption_type: str = "AES256"  # or "KMS"
    kms_key: str | None = None


@dataclass(frozen=True)
class LifecycleResult:
    """What happened to one repository; maps onto the RetentionApplied condition."""

    repository: str  # the key given to apply_lifecycle_policies
    ok: bool
    reason: str  # Applied | Unchanged | one of FAILURE_REASONS
    message: str
    changed: bool = False  # put_lifecycle_policy was called and succeeded
    created: bool = False  # the repository was created first


def apply_lifecycle_policies(
    policies: Mapping[str, RepositoryPolicy | tuple[str, Mapping[str, Any]]],
    *,
    endpoint_url: str | None = None,
    create_missing: RepositorySettings | None = None,
    max_attempts: int | None = None,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
) -> dict[str, LifecycleResult]:
    """Make each repository's lifecycle policy equal the desired one.

    ``policies`` maps a key to either a ``RepositoryPolicy`` (the builder's output:
    account and region come from its registry host) or ``(region, policy)`` (the key is
    then the repository name in the caller's own registry). One failure never stops
    the others. ``put_lifecycle_policy`` is called only when the parsed policy in place
    differs. ``endpoint_url`` defaults to ``$COURSEHUB_AWS_ENDPOINT_URL``.
    ``max_attempts`` counts every try of one call (botocore's standard mode: 3 unless
    given); the timeouts are in seconds (botocore's defaults: 60).
    """
    endpoint_url = default_endpoint(endpoint_url)
    results = {}
    for key in sorted(policies):
        results[key] = _apply_one(
            key,
            policies[key],
            endpoint_url=endpoint_url,
            create_missing=create_missing,
            client_options=(max_attempts, connect_timeout, read_timeout),
        )
    return results


def _apply_one(key, desired, *, endpoint_url, create_missing, client_options) -> LifecycleResult:
    if isinstance(desired, RepositoryPolicy):
        parsed = parse_ecr_host(desired.registry_host)
        if parsed is None:
            return LifecycleResult(
                key,
                False,
                "RegistryError",
                f"{desired.registry_host} is not an ECR registry host; lifecycle policies are ECR's",
            )
        account, region = parsed
        name, policy = desired.repository, desired.policy
    else:
        region, policy = desired
        account, name = None, key
    where = f"ECR repository {name!r}" + (f" in account {account}" if account else "") + f" ({region})"
    ids: dict[str, str] = {"repositoryName": name}
    if account:
        ids["registryId"] = account
    step = "ecr:GetLifecyclePolicy"
    created = False
    try:
        max_attempts, connect_timeout, read_timeout = client_options
        client = ecr_client(
            region,
            endpoint_url,
            max_attempts=max_attempts,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        try:
            current = _current_policy(client, ids)
        except botocore.exceptions.ClientError as e:
            if _code(e) != "RepositoryNotFoundException" or create_missing is None:
                raise
            step = "ecr:CreateRepository"
            _create(client, ids, create_missing)
            created, current = True, None
        if current is not None and normalize_policy(current) == normalize_policy(policy):
            return LifecycleResult(key, True, "Unchanged", f"lifecycle policy of {where} is up to date")
        step = "ecr:PutLifecyclePolicy"
        client.put_lifecycle_policy(**ids, lifecyclePolicyText=policy_text(policy))
    except Exception as e:  # every failure becomes a result; the operator keeps going
        return _failure(key, e, where, step, endpoint_url)
    verb = "created with scan on push and" if created else "given"
    return LifecycleResult(
        key,
        True,
        "Applied",
        f"{where} {verb} a lifecycle policy of {len(policy.get('rules', []))} rules",
        changed=True,
        created=created,
    )


def _current_policy(client, ids) -> dict[str, Any] | None:
    try:
        text = client.get_lifecycle_policy(**ids)["lifecyclePolicyText"]
    except botocore.exceptions.ClientError as e:
        if _code(e) == "LifecyclePolicyNotFoundException":
            return None
        raise
    try:
        return json.loads(text)
    except ValueError:
        return None  # unreadable: replace it


def _create(client, ids, settings: RepositorySettings) -> None:
    encryption: dict[str, str] = {"encryptionType": settings.encryption_type}
    if settings.kms_key:
        encryption["kmsKey"] = settings.kms_key
    try:
        client.create_repository(
            **ids,
            imageTagMutability=settings.tag_mutability,
            imageScanningConfiguration={"scanOnPush": settings.scan_on_push},
            encryptionConfiguration=encryption,
        )
    except botocore.exceptions.ClientError as e:
        if _code(e) != "RepositoryAlreadyExistsException":  # a concurrent creator won
            raise


def _code(e: botocore.exceptions.ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _failure(key, e: Exception, where: str, step: str, endpoint_url: str | None) -> LifecycleResult:
    def fail(reason: str, message: str) -> LifecycleResult:
        return LifecycleResult(key, False, reason, message)

    failure = classify(e)
    code, detail = failure.code, failure.detail
    if failure.kind == "not_found" and code == "RepositoryNotFoundException":
        return fail(
            "RepositoryNotFound",
            f"{where} does not exist: create it (CI, Terraform) or enable the operator "
            "setting that creates missing repositories",
        )
    if failure.kind == "access":
        return fail(
            "AccessDenied",
            f"the operator's AWS identity may not call {step} on {where} ({code}: {detail}); "
            "grant ecr:GetLifecyclePolicy and ecr:PutLifecyclePolicy (and ecr:CreateRepository "
            "if it creates repositories) to its role",
        )
    if failure.kind == "throttled":
        return fail(
            "Throttled",
            f"ECR throttled {step} on {where} after the client's retries ({code}); "
            "the operator will try again later",
        )
    if failure.kind == "no_credentials":
        return fail(
            "AccessDenied",
            f"no AWS credentials for {step} on {where}: give the operator's service account "
            "an IAM role (IRSA) or credentials through the standard AWS chain",
        )
    if failure.kind == "unreachable":
        endpoint = endpoint_url or "the regional ECR endpoint"
        return fail(
            "EndpointUnreachable",
            f"cannot reach {endpoint} for {step} on {where} ({code}); "
            "check network egress, VPC endpoints or the endpoint override",
        )
    if isinstance(e, botocore.exceptions.ClientError):
        return fail("RegistryError", f"{step} on {where} failed: {code}: {detail}")
    return fail("RegistryError", f"{step} on {where} failed: {type(e).__name__}: {e}")
