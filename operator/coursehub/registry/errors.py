"""Errors raised while parsing or resolving an image reference.

Every failure is a ``ResolveError`` whose ``reason`` is one of ``REASONS``; the
CourseImage handler copies ``reason`` and ``message`` into the ``ImageResolved``
condition, so messages are written for a course author and say what to fix.
"""

from __future__ import annotations

REASONS = frozenset(
    {
        "InvalidImageReference",
        "ImageNotFound",
        "RegistryUnauthorized",
        "RegistryUnreachable",
        "RegistryError",
        "RegistryNotAllowed",
    }
)


class ResolveError(Exception):
    """``ResolveError(reason, message)``: why an image could not be resolved."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown resolve reason {reason!r}; expected one of {sorted(REASONS)}")
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"


class _FixedReason(ResolveError):
    reason_name = "RegistryError"

    def __init__(self, message: str) -> None:
        super().__init__(self.reason_name, message)


# Also a ValueError so that pydantic validators can raise it directly.
class InvalidImageReference(_FixedReason, ValueError):
    reason_name = "InvalidImageReference"


class ImageNotFound(_FixedReason):
    reason_name = "ImageNotFound"


class RegistryUnauthorized(_FixedReason):
    reason_name = "RegistryUnauthorized"


class RegistryUnreachable(_FixedReason):
    reason_name = "RegistryUnreachable"


class RegistryError(_FixedReason):
    reason_name = "RegistryError"


# The registry, its token service or a redirect points where the operator may not go (a private
# address, another origin, plain HTTP): fixed by the registry or by the operator's settings.
class RegistryNotAllowed(_FixedReason):
    reason_name = "RegistryNotAllowed"
