"""Where the image resolver may go, and how much it may read (pure; no I/O).

A CourseImage author names any registry, and a registry names its token service (the
``realm`` of a 401 challenge) and may redirect. Without limits that makes the operator a
proxy into the cluster's network (SSRF) and a courier for pull-secret credentials. The rules,
explained for users in docs/registries.md:

* plain HTTP only to hosts listed in ``insecure_registries``;
* a bearer realm on the registry's own host name, or on a token host configured for that
  registry (public defaults below); https unless the realm's host is itself listed insecure;
* loopback, link-local, private and other non-global addresses, as DNS resolves them, only for
  hosts explicitly configured (insecure, private or token hosts of the settings);
* same-origin redirects only;
* bounded bodies, a deadline per resolution and a concurrency limit per registry.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

__all__ = [
    "DEFAULT_TOKEN_HOSTS",
    "MAX_ERROR_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_TOKEN_BYTES",
    "RegistryPolicy",
    "host_matches",
    "is_global_address",
    "split_host",
    "token_host_pairs",
]

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the distribution spec's limit registries enforce on push
MAX_TOKEN_BYTES = 64 * 1024
MAX_ERROR_BYTES = 64 * 1024  # read only to find the error codes, never shown

#: Token hosts of public registries whose realm is not on the registry's own host. Registries
#: not listed (ghcr.io, quay.io, gcr.io, *-docker.pkg.dev, public.ecr.aws, *.azurecr.io, Harbor)
#: serve tokens from their own host, which is always allowed.
DEFAULT_TOKEN_HOSTS: Mapping[str, tuple[str, ...]] = {
    "docker.io": ("auth.docker.io",),
    "registry-1.docker.io": ("auth.docker.io",),
    "registry.gitlab.com": ("gitlab.com",),
}


def split_host(host: str) -> tuple[str, int | None]:
    """``"[::1]:5000"`` -> ``("::1", 5000)``; ``"a.b"`` -> ``("a.b", None)``; lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1 :]
        return name, int(rest[1:]) if rest[1:].isdigit() else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, int(port)
    return host, None


def _entry(entry: str) -> tuple[str, int | None]:
    # Entries may be written as URLs ("http://registry.local:5000/"): only the host counts.
    text = entry.strip()
    for prefix in ("http://", "https://"):
        text = text.removeprefix(prefix)
    return split_host(text.split("/", 1)[0])


def host_matches(name: str, port: int | None, entries: Iterable[str]) -> bool:
    """Whether ``name[:port]`` is one of ``entries`` (``host`` matches any port, ``host:port`` one)."""
    name = name.lower().strip("[]")
    for entry in entries:
        entry_name, entry_port = _entry(entry)
        if entry_name and entry_name == name and entry_port in (None, port):
            return True
    return False


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def is_global_address(address: str) -> bool:
    """Whether ``address`` is publicly routable: not loopback, link-local, private, shared
    (100.64/10), reserved, multicast or unspecified, also when written as IPv4-mapped IPv6."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is None and ip in _NAT64:  # 64:ff9b::/96 carries an IPv4 address too
            mapped = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if mapped is not None:
            return is_global_address(str(mapped))
    return ip.is_global and not ip.is_multicast


def token_host_pairs(entries: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``["docker.io=auth.docker.io", ...]`` -> ``{"docker.io": ("auth.docker.io",)}``."""
    mapping: dict[str, list[str]] = {}
    for entry in entries:
        registry, sep, host = entry.partition("=")
        if not sep or not registry.strip() or not host.strip():
            raise ValueError(
                f"token host entry {entry!r} must be 'registry=host', e.g. docker.io=auth.docker.io"
            )
        mapping.setdefault(registry.strip().lower(), []).append(host.strip().lower())
    return {k: tuple(v) for k, v in mapping.items()}


@dataclass(frozen=True)
class RegistryPolicy:
    """The resolver's limits. ``from_settings`` builds it from the operator settings."""

    insecure_registries: tuple[str, ...] = ()
    private_registries: tuple[str, ...] = ()
    token_hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    deadline: float = 30.0
    per_registry_concurrency: int = 4
    max_manifest_bytes: int = MAX_MANIFEST_BYTES
    max_token_bytes: int = MAX_TOKEN_BYTES
    # Trust for registries with a private CA (tests use their own); None: the system's CAs.
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Any) -> RegistryPolicy:
        return cls(
            insecure_registries=tuple(settings.insecure_registries),
            private_registries=tuple(settings.private_registries),
            token_hosts=token_host_pairs(settings.registry_token_hosts),
            deadline=float(settings.resolve_deadline),
            per_registry_concurrency=int(settings.registry_concurrency),
        )

    def is_insecure(self, host: str) -> bool:
        """Whether ``host`` (``name[:port]``) is spoken to over plain HTTP."""
        return host_matches(*split_host(host), self.insecure_registries)

    def may_be_private(self, name: str, port: int | None) -> bool:
        """Whether ``name:port`` was named by the operator's settings, so it may resolve to a
        loopback, link-local or private address."""
        configured = [h for hosts in self.token_hosts.values() for h in hosts]
        return host_matches(name, port, (*self.insecure_registries, *self.private_registries, *configured))

    def token_hosts_for(self, registry: str, api_host: str) -> set[str]:
        """Host names (lower case) a realm of this registry may be on."""
        allowed = {split_host(registry)[0], split_host(api_host)[0]}
        for key in {registry.lower(), api_host.lower(), split_host(registry)[0], split_host(api_host)[0]}:
            allowed.update(split_host(h)[0] for h in DEFAULT_TOKEN_HOSTS.get(key, ()))
            allowed.update(split_host(h)[0] for h in self.token_hosts.get(key, ()))
        return allowed

    def realm_problem(self, registry: str, api_host: str, realm: str) -> str | None:
        """Why the bearer ``realm`` a registry named may not be asked for a token, or None."""
        try:
            url = URL(realm)
        except ValueError:
            return "it is not a URL"
        if not url.is_absolute() or url.scheme not in ("http", "https") or not url.host:
            return "it is not an absolute http(s) URL"
        if url.user is not None or url.password is not None:
            return "it carries user information"
        allowed = self.token_hosts_for(registry, api_host)
        if url.host.lower() not in allowed:
            return (
                f"its host {url.host} is neither the registry's nor a token host configured for it "
                f"(allowed: {', '.join(sorted(allowed))}; the operator setting "
                "COURSEHUB_REGISTRY_TOKEN_HOSTS adds more)"
            )
        if url.scheme == "http" and not (
            self.is_insecure(api_host) and host_matches(url.host, url.port, self.insecure_registries)
        ):
            return "it is plain HTTP; a token service must use https unless its host is an insecure registry"
        return None
