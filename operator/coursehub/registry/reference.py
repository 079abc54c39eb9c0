"""Parsing and validation of container image references (no I/O).

Grammar (the one Docker and containerd use, restricted to sha256 digests)::

    reference   := name [":" tag] ["@" digest]
    name        := [domain "/"] path-component ["/" path-component]*
    domain      := host [":" port]      host: DNS labels, "localhost" or "[ipv6]";
                                        port: 1-65535, no leading zeros
    path-comp   := [a-z0-9]+ (("." | "_" | "__" | "-"+) [a-z0-9]+)*
    tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest      := "sha256:" 64 lowercase hex

and the name (before tag and digest) is at most 255 characters. One grammar: the CRD
pattern of CourseImage ``spec.image`` is ``COURSE_IMAGE_PATTERN`` plus a CEL rule for
``NAME_LENGTH_PATTERN``, and ``parse_reference`` checks the same two patterns.

The first component is a domain only if it contains "." or ":" (or "[") or is
"localhost"; otherwise the image is on Docker Hub (``docker.io``), and a single
component gets the ``library/`` prefix, as ``docker pull`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidImageReference

__all__ = [
    "COURSE_IMAGE_PATTERN",
    "DOCKER_HUB",
    "IMAGE_REFERENCE_PATTERN",
    "NAME_LENGTH_PATTERN",
    "NAME_LENGTH_RULE",
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
# 1-65535 without leading zeros: a port the pattern accepts is a port that exists.
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
# Brackets and at least two colons (every IPv6 address has them), so "[abc]" is neither an
# address nor a path.
_IPV6 = r"\[[0-9a-fA-F]*:[0-9a-fA-F]*:[0-9a-fA-F:]*\]"
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

#: Anchored pattern (OpenAPI / ECMA-262 subset, RE2-safe) of every reference ``parse_reference``
#: accepts, together with ``NAME_LENGTH_PATTERN``. The parser checks both, so the two cannot drift.
IMAGE_REFERENCE_PATTERN = rf"^{_NAME}(?::{_TAG})?(?:@{_DIGEST})?$"
#: The same grammar with a tag or a digest required (a bare name would mean an implicit
#: ":latest", never what a course wants): CourseImage ``spec.image``'s CRD pattern, and what
#: ``parse_reference(text, require_tag_or_digest=True)`` accepts.
COURSE_IMAGE_PATTERN = rf"^{_NAME}(?::{_TAG}(?:@{_DIGEST})?|@{_DIGEST})$"
#: The name (everything before the tag or digest) is at most 255 characters, as containerd
#: demands. On a reference that matches the grammar the only ":" after the last "/" starts the
#: tag, so this holds exactly when the name is short enough. The CRD checks it with a CEL rule.
NAME_LENGTH_PATTERN = rf"^.{{1,{NAME_MAX_LENGTH}}}(?::[^:/@]+)?(?:@{_DIGEST})?$"
#: The CEL rule the CRD uses for ``NAME_LENGTH_PATTERN`` (the pattern holds no quote or backslash).
NAME_LENGTH_RULE = f"self.matches('{NAME_LENGTH_PATTERN}')"

_REFERENCE_RE = re.compile(IMAGE_REFERENCE_PATTERN)
_COURSE_IMAGE_RE = re.compile(COURSE_IMAGE_PATTERN)
_NAME_LENGTH_RE = re.compile(NAME_LENGTH_PATTERN)
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
    host_end = domain.rfind(":")
    port = domain[host_end + 1 :] if host_end != -1 and not domain.endswith("]") else ""
    if port.isdigit() and port.isascii():
        if not 1 <= int(port) <= 65535:
            raise _invalid(text, f"registry port {int(port)} is out of range 1-65535")
        if port.startswith("0"):
            raise _invalid(text, f"registry port {port!r} must be written without leading zeros")
    if not _DOMAIN_RE.match(domain):
        raise _invalid(
            text,
            f"registry host {domain!r} is not a valid host name or host:port "
            "(letters, digits, '-' and '.', optionally ':<port>'; IPv6 as '[address]:<port>')",
        )


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


def parse_reference(text: str, *, require_tag_or_digest: bool = False) -> ImageReference:
    """Parse ``text`` into an ``ImageReference``.

    Accepts exactly what ``IMAGE_REFERENCE_PATTERN`` and ``NAME_LENGTH_PATTERN`` accept (with
    ``require_tag_or_digest``: ``COURSE_IMAGE_PATTERN``, the CRD's pattern). Raises
    ``InvalidImageReference`` (a ``ResolveError`` and a ``ValueError``) with a message that
    names the offending part.
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

    remainder, at, after = text.partition("@")
    digest: str | None = None
    if at:
        if "@" in after:
            raise _invalid(text, "contains more than one '@'")
        _check_digest(text, after)
        digest = after

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

    if require_tag_or_digest and tag is None and digest is None:
        raise _invalid(
            text,
            "give a tag (':v1') or a digest ('@sha256:...'); a bare name would mean ':latest'",
        )
    # The checks above explain a failure; the grammar itself decides (it is the CRD's too).
    grammar = _COURSE_IMAGE_RE if require_tag_or_digest else _REFERENCE_RE
    if not grammar.match(text) or not _NAME_LENGTH_RE.match(text):
        raise _invalid(text, "it does not match the image reference grammar (see docs/registries.md)")

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


def is_digest_of(image: str, candidate: object) -> bool:
    """Whether `candidate` is a digest-pinned reference (no tag) into `image`'s own registry and
    repository: the only kind of image a course may keep serving from state the operator reads
    back (its status, its allowlist) before resolving `image` itself."""
    if not isinstance(candidate, str):
        return False
    try:
        want, got = parse_reference(image), parse_reference(candidate)
    except ValueError:
        return False
    return (
        got.digest is not None
        and got.tag is None
        and (got.registry, got.repository) == (want.registry, want.repository)
    )


def pinned(repo: str, digest: str) -> str:
    """``repo@digest`` after checking both parts; ``repo`` may not carry a tag."""
    reference = parse_reference(f"{repo}@{digest}")
    if reference.tag is not None:
        raise _invalid(repo, "a repository to pin must not carry a tag")
    return f"{reference.name}@{reference.digest}"
