"""What the two ECR users (resolution in ecr.py, lifecycle policies in ecr_lifecycle.py) share:
one cached boto3 client per region and options, and one classification of AWS errors. Each
caller turns a classification into its own reasons and messages.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

__all__ = ["ENDPOINT_ENV", "AwsFailure", "classify", "ecr_client", "endpoint_url"]

#: Overrides the ECR endpoint (VPC endpoints; tests point it at moto's server).
ENDPOINT_ENV = "COURSEHUB_AWS_ENDPOINT_URL"

_NOT_FOUND_CODES = {
    "ImageNotFoundException",
    "RepositoryNotFoundException",
    "LifecyclePolicyNotFoundException",
}
_ACCESS_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "MissingAuthenticationToken",
    "UnauthorizedOperation",
}
_THROTTLE_CODES = {
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
}
_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)


def endpoint_url(explicit: str | None = None) -> str | None:
    """The endpoint to use: ``explicit``, else ``$COURSEHUB_AWS_ENDPOINT_URL``, else AWS's (None)."""
    return explicit or os.environ.get(ENDPOINT_ENV) or None


# boto3 clients are thread-safe, but creating one is slow and boto3's default Session is not.
_client_lock = threading.Lock()


@functools.lru_cache(maxsize=32)
def _cached_client(
    region: str,
    endpoint: str | None,
    max_attempts: int | None,
    connect_timeout: float | None,
    read_timeout: float | None,
) -> Any:
    retries: dict[str, Any] = {"mode": "standard"}
    if max_attempts is not None:
        retries["total_max_attempts"] = max_attempts  # the first try included
    options: dict[str, Any] = {"retries": retries}
    if connect_timeout is not None:
        options["connect_timeout"] = connect_timeout
    if read_timeout is not None:
        options["read_timeout"] = read_timeout
    # A session per client: boto3's default session is not thread-safe.
    return boto3.session.Session().client(
        "ecr", region_name=region, endpoint_url=endpoint, config=botocore.config.Config(**options)
    )


def ecr_client(
    region: str,
    endpoint: str | None = None,
    *,
    max_attempts: int | None = None,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
) -> Any:
    """A cached boto3 ECR client; credentials from the standard chain (IRSA in production).

    ``max_attempts`` counts every try of one call (botocore's standard mode: 3 unless given);
    the timeouts are in seconds (botocore's defaults: 60)."""
    with _client_lock:
        return _cached_client(region, endpoint, max_attempts, connect_timeout, read_timeout)


@dataclass(frozen=True)
class AwsFailure:
    """``kind``: not_found | access | throttled | no_credentials | unreachable | other."""

    kind: str
    code: str  # the AWS error code, or the exception's type name
    detail: str  # AWS's message (never a secret: AWS error messages name actions and resources)


def classify(exc: BaseException) -> AwsFailure:
    """What went wrong in a boto3 call, in the terms both callers need."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        detail = str(error.get("Message", "")) or code
        if code in _NOT_FOUND_CODES:
            return AwsFailure("not_found", code, detail)
        if code in _ACCESS_CODES:
            return AwsFailure("access", code, detail)
        if code in _THROTTLE_CODES:
            return AwsFailure("throttled", code, detail)
        return AwsFailure("other", code, detail)
    name = type(exc).__name__
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return AwsFailure("no_credentials", name, str(exc))
    if isinstance(exc, _UNREACHABLE):
        return AwsFailure("unreachable", name, str(exc))
    return AwsFailure("other", name, str(exc))
