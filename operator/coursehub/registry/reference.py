"""Parsing and validation of container image references (no I/O).

Grammar (the one Docker and containerd use, restricted to sha256 digests)::

    reference   := name [":" tag] ["@" digest]
    name        := [domain "/"] path-component ["/" path-component]*
    domain      := host [":" port]      host: DNS labels, "localhost" or "[ipv6]"
    path-comp   := [a-z0-9]+ (("." | "_" | "__" | "-"+) [a-z0-9]+)*
    tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest      := "sha256:" 64 lowercase hex

The first component is a domain only if it contains "." or ":" (or "[") or is
"localhost"; otherwise the image is on Docker Hub (``docker.io``), and a single
component gets the ``library/`` prefix, as ``docker pull`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidImageReference

__all__ = [
    "DOCKER_HUB",
    "IMAGE_REFERENCE_PATTERN",
    "ImageReference",
    "parse_ecr_host",
    "parse_reference",
    "pinned",
]

DOCKER_HUB = "docker.io"
# The host that actually serves Docker Hub's distribution API.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
NAME_MAX_LENGTH = 255

# Building blocks, written in the common subset of Python `re`, ECMA-262 and RE2
# (no lookaround, no backreferences) because the CRD pattern reuses them.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:__|_|\.|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
# A first component without "." can never be mistaken for a domain.
_PATH_COMPONENT_NO_DOT = rf"{_ALNUM}(?:(?:__|_|-+){_ALNUM})*"
_DOMAIN_COMPONENT = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_PORT = r"[0-9]{1,5}"
# Brackets and at least one colon, so "[abc]" is neither an address nor a path.
_IPV6 = r"\[[0-9a-fA-F]*:[0-9a-fA-F:]*\]"
_DOMAIN = (
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})+(?::{_PORT})?"
    rf"|{_DOMAIN_COMPONENT}:{_PORT}"
    rf"|localhost"
    rf"|{_IPV6}(?::{_PORT})?)"
)
_NAME = (
    rf"(?:{_DOMAIN}/{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    rf"|{_PATH_COMPONENT_NO_DOT}(?:/{_PATH_COMPONENT})+"
    rf"|{_PATH_COMPONENT})"
)
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"

#: Anchored pattern for a CRD ``pattern`` (OpenAPI / ECMA-262 subset, RE2-safe).
#: It accepts exactly what ``parse_reference`` accepts, except that the parser
#: also limits the name to 255 characters and ports to 1-65535.
IMAGE_REFERENCE_PATTERN = rf"^{_NAME}(?::{_TAG})?(?:@{_DIGEST})?$"

_PATH_COMPONENT_RE = re.compile(rf"^{_PATH_COMPONENT}$")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_TAG_RE = re.compile(rf"^{_TAG}$")
_DIGEST_RE = re.compile(rf"^{_DIGEST}$")
_ECR_HOST_RE = re.compile(
    r"^(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+)"
    r"\.amazonaws\.com(?:\.cn)?$"
)


@dataclass(frozen=True)
class ImageReference:
    """A parsed, normalized image reference.

    ``registry`` is the domain as written (``docker.io`` when omitted),
    ``repository`` the path (``library/x`` for official Docker Hub images);
    ``tag`` is ``latest`` when neither a tag nor a digest was given.
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """Fully qualified repository: ``registry/repository``."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """Host (and port) that serves the distribution API for this registry."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def manifest_reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def pinned(self) -> str | None:
        """``registry/repository@sha256:...`` when a digest is known, else None."""
        return pinned(self.name, self.digest) if self.digest else None

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _invalid(text: str, why: str) -> InvalidImageReference:
    return InvalidImageReference(f"image reference {text!r} is invalid: {why}")


def _check_digest(text: str, digest: str) -> None:
    if _DIGEST_RE.match(digest):
        return
    algorithm, sep, hex_part = digest.partition(":")
    if not sep:
        raise _invalid(text, f"digest {digest!r} must look like 'sha256:<64 hex characters>'")
    if algorithm != "sha256":
        raise _invalid(
            text,
            f"digest algorithm {algorithm!r} is not supported; use a sha256 digest",
        )
    if len(hex_part) != 64:
        raise _invalid(text, f"sha256 digest must have 64 hex characters, found {len(hex_part)}")
    raise _invalid(text, "sha256 digest must contain only lowercase hex characters 0-9 and a-f")


def _check_tag(text: str, tag: str) -> None:
    if _TAG_RE.match(tag):
        return
    if not tag:
        raise _invalid(text, "tag after ':' is empty")
    if len(tag) > 128:
        raise _invalid(text, f"tag is {len(tag)} characters long; the limit is 128")
    raise _invalid(
        text,
        f"tag {tag!r} may contain only letters, digits, '_', '.' and '-' and must not start with '.' or '-'",
    )


def _check_domain(text: str, domain: str) -> None:
    if not _DOMAIN_RE.match(domain):
        raise _invalid(
            text,
            f"registry host {domain!r} is not a valid host name or host:port "
            "(letters, digits, '-' and '.', optionally ':<port>')",
        )
    host_end = domain.rfind(":")
    if host_end != -1 and not domain.endswith("]"):
        port = int(domain[host_end + 1 :])
        if not 1 <= port <= 65535:
            raise _invalid(text, f"registry port {port} is out of range 1-65535")


def _check_path(text: str, path: str) -> None:
    components = path.split("/")
    if any(not c for c in components):
        raise _invalid(
            text,
            f"repository path {path!r} has an empty component (check for '//' or a trailing '/')",
        )
    if path != path.lower():
        raise _invalid(text, f"repository path {path!r} must be lowercase")
    for component in components:
        if not _PATH_COMPONENT_RE.match(component):
            raise _invalid(
                text,
                f"repository path component {component!r} may contain only lowercase letters and "
                "digits, separated by '.', '_', '__' or '-', and must start and end with a letter or digit",
            )


def _looks_like_domain(component: str) -> bool:
    return any(ch in component for ch in ".:[") or component == "localhost"


def parse_reference(text: str) -> ImageReference:
    """Parse ``text`` into an ``ImageReference``.

    Raises ``InvalidImageReference`` (a ``ResolveError`` and a ``ValueError``)
    with a message that names the offending part.
    """
    if not isinstance(text, str):
        raise InvalidImageReference(f"image reference must be a string, not {type(text).__name__}")
    if not text:
        raise InvalidImageReference("image reference is empty")
    for position, ch in enumerate(text):
        if ch.isspace() or not ch.isprintable():
            raise _invalid(
                text,
                f"contains whitespace or a control character at position {position}",
            )
    if "://" in text:
        raise _invalid(text, "must not include a URL scheme; write it as 'host[:port]/path:tag'")

    remainder, at, digest = text.partition("@")
    if at:
        if "@" in digest:
            raise _invalid(text, "contains more than one '@'")
        _check_digest(text, digest)
    else:
        digest = None

    tag: str | None = None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        _check_tag(text, tag)

    if not remainder:
        raise _invalid(text, "repository name is missing")
    if len(remainder) > NAME_MAX_LENGTH:
        raise _invalid(
            text,
            f"repository name is {len(remainder)} characters long; the limit is {NAME_MAX_LENGTH}",
        )

    first, slash, rest = remainder.partition("/")
    if slash and _looks_like_domain(first):
        domain, path = first, rest
        _check_domain(text, domain)
    else:
        domain, path = DOCKER_HUB, remainder
    _check_path(text, path)

    if domain == "index.docker.io":
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry=domain, repository=path, tag=tag, digest=digest)


def parse_ecr_host(host: str) -> tuple[str, str] | None:
    """``(account, region)`` for a private ECR registry host, else None.

    Accepts ``<account>.dkr.ecr.<region>.amazonaws.com``, the ``.com.cn``
    partition and the ``dkr.ecr-fips`` endpoints.
    """
    match = _ECR_HOST_RE.match(host)
    if not match:
        return None
    return match.group("account"), match.group("region")


def pinned(repo: str, digest: str) -> str:
    """``repo@digest`` after checking both parts; ``repo`` may not carry a tag."""
    reference = parse_reference(f"{repo}@{digest}")
    if reference.tag is not None:
        raise _invalid(repo, "a repository to pin must not carry a tag")
    return f"{reference.name}@{reference.digest}"
