"""Pure: which secret may sign a push for which repository (push webhooks, docs/builds.md).

One operator-wide secret would let every course author who configures a repository webhook
forge pushes for every other course's repository. A CourseImage may therefore name its
repository's own secret (spec.build.git.webhookSecretRef). The rule (`authorize`):

- a repository some CourseImage with its own secret builds is verified ONLY against the own
  secrets of the CourseImages building it; the operator-wide secret no longer suffices for it,
  and an own secret that cannot be read refuses its pushes (fail closed, polling still builds);
- every other repository keeps the operator-wide secret.

A payload names its repository several ways (clone, ssh and web URLs) and anyone can write
anything there before the signature is checked, so the verdict is per repository: a push wakes
only the repositories whose accepted secrets include the one that signed it (a payload naming
course A's and course B's repository, signed with A's secret, wakes A's only).

The handler (reconcile/webhook.py) reads the body within its size limit, names the repositories
(`payload_repositories`, unauthenticated), reads the own secrets (I/O) and asks `authorize`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .courses import CourseRecord

Key = tuple[str, str]

# Where a payload names its repository: GitHub's repository, GitLab's project (or repository).
GITHUB_URL_FIELDS = ("clone_url", "ssh_url", "git_url", "html_url", "url")
GITLAB_URL_FIELDS = ("git_http_url", "git_ssh_url", "web_url", "http_url", "url")


class Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def repo_key(url: str) -> str:
    """One name for a repository however it is written: host (lower case) and path, without
    scheme, user, port, '.git' and trailing '/' (https://Git.x/a/b.git = ssh://git@git.x/a/b)."""
    if "://" not in url and ":" in url and "@" in url.split(":", 1)[0]:  # scp-like git@host:a/b
        user_host, _, path = url.partition(":")
        host = user_host.split("@", 1)[1]
    else:
        parts = urlsplit(url)
        host, path = (parts.hostname or ""), parts.path
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[:-4]
    return f"{host.lower()}/{path}"


def repository_urls(doc: object, provider: str) -> tuple[str, ...]:
    """The URLs a (parsed) payload names its repository by."""
    if not isinstance(doc, dict):
        return ()
    if provider == "github":
        repo, fields = doc.get("repository"), GITHUB_URL_FIELDS
    else:
        repo, fields = doc.get("project") or doc.get("repository"), GITLAB_URL_FIELDS
    if not isinstance(repo, dict):
        return ()
    return tuple(u for u in (repo.get(k) for k in fields) if isinstance(u, str) and u)


def provider_of(headers: Mapping[str, str]) -> str:
    """github (X-Hub-Signature-256) or gitlab (X-Gitlab-Token); Refused 401 without either."""
    h = {k.lower() for k in headers}
    if "x-hub-signature-256" in h:
        return "github"
    if "x-gitlab-token" in h:
        return "gitlab"
    raise Refused(401, "no X-Hub-Signature-256 (GitHub) or X-Gitlab-Token (GitLab) header")


def payload_repositories(headers: Mapping[str, str], body: bytes) -> frozenset[str]:
    """The repositories (repo_key) an UNVERIFIED body names: only to choose the secrets to
    verify it with. Not JSON, or no repository: none (the operator-wide secret applies)."""
    provider = provider_of(headers)
    try:
        doc = json.loads(body)
    except ValueError:
        return frozenset()
    return frozenset(repo_key(u) for u in repository_urls(doc, provider))


def signed_with(headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    """Whether the request carries `secret`'s signature (GitHub: HMAC-SHA256 of the body;
    GitLab: the token itself), compared in constant time. An empty secret signs nothing."""
    if not secret:
        return False
    h = {k.lower(): v for k, v in headers.items()}
    sig = h.get("x-hub-signature-256")
    if sig is not None:
        want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(sig.strip().encode(), want.encode())
    token = h.get("x-gitlab-token")
    return token is not None and hmac.compare_digest(token.encode(), secret)


def accepted_secrets(
    repositories: Iterable[str], own: Mapping[str, Sequence[bytes]], operator: bytes
) -> dict[str, tuple[bytes, ...]]:
    """Per repository, the secrets that may sign its pushes: its CourseImages' own secrets if
    any CourseImage building it has one (`own` names it, even with no readable secret: then
    none), else the operator-wide secret (none if unset)."""
    out: dict[str, tuple[bytes, ...]] = {}
    for repo in repositories:
        if repo in own:
            out[repo] = tuple(s for s in own[repo] if s)
        else:
            out[repo] = (operator,) if operator else ()
    return out


@dataclass(frozen=True)
class Verdict:
    provider: str  # github | gitlab
    repositories: frozenset[str]  # the repo_keys this signature may wake


def authorize(
    headers: Mapping[str, str],
    body: bytes,
    repositories: Iterable[str],
    own: Mapping[str, Sequence[bytes]],
    operator: bytes,
) -> Verdict:
    """Which of `repositories` (what the body names) the request's signature speaks for, or
    Refused: 401 without a signature header, 403 when no accepted secret signed it.
    A payload naming no repository (a ping of an organisation hook) is checked against the
    operator-wide secret and wakes nothing."""
    provider = provider_of(headers)
    repos = frozenset(repositories)
    accepted = accepted_secrets(repos, own, operator)
    candidates = {s for secrets in accepted.values() for s in secrets}
    if not repos and operator:
        candidates.add(operator)
    if not candidates:
        raise Refused(
            403,
            "no webhook secret for this repository"
            if repos and any(r in own for r in repos)
            else "no webhook secret configured: webhooks are off",
        )
    signer = next((s for s in candidates if signed_with(headers, body, s)), None)
    if signer is None:
        raise Refused(
            403,
            "X-Hub-Signature-256 does not match the body"
            if provider == "github"
            else "X-Gitlab-Token is wrong",
        )
    return Verdict(provider, frozenset(r for r in repos if signer in accepted[r]))


# -- the CourseImages' own secrets ---------------------------------------------------------------
@dataclass(frozen=True)
class OwnSecretRef:
    course: Key
    repository: str  # repo_key of spec.build.git.url
    name: str  # the Secret, in the course's namespace
    key: str


def own_secret_refs(
    courses: Iterable[CourseRecord], repositories: Iterable[str] | None = None
) -> list[OwnSecretRef]:
    """The own webhook secrets of the CourseImages that build one of `repositories` (None: any).
    A CourseImage being deleted builds nothing and speaks for no repository."""
    wanted = None if repositories is None else frozenset(repositories)
    out = []
    for c in courses:
        b = c.spec.build
        if c.deleting or b is None or b.git.webhook_secret_ref is None:
            continue
        repo = repo_key(b.git.url)
        if wanted is None or repo in wanted:
            ref = b.git.webhook_secret_ref
            out.append(OwnSecretRef(c.key, repo, ref.name, ref.key))
    return out


def own_secret(
    ref: OwnSecretRef, namespace: str, data: Mapping[str, bytes] | None, error: str | None = None
) -> tuple[bytes | None, tuple[str, str] | None]:
    """A CourseImage's own webhook secret from its Secret's decoded `data` (None: not found;
    `error`: it could not be read), or the (reason, message) of the Built condition that names
    the field and the fix. Trailing whitespace is dropped (a secret written with `echo`), as for
    the operator-wide secret's file."""
    field = "spec.build.git.webhookSecretRef"
    refused = "pushes for this repository are refused (polling still builds)"
    if error is not None:
        return None, (
            "WebhookSecretUnreadable",
            f"{field}: Secret {ref.name} in {namespace} could not be read ({error}); {refused}. Let the "
            f"operator get Secrets in {namespace} (the chart does for watched namespaces)",
        )
    if data is None:
        return None, (
            "WebhookSecretNotFound",
            f"{field}: Secret {ref.name} not found in {namespace}; {refused}. Create it with key "
            f"'{ref.key}' holding the secret the repository's webhook is configured with, or remove "
            f"{field}",
        )
    value = (data.get(ref.key) or b"").strip()
    if not value:
        return None, (
            "WebhookSecretInvalid",
            f"{field}: Secret {ref.name} has no key '{ref.key}' or it is empty; {refused}. Put the "
            f"secret the repository's webhook is configured with under '{ref.key}', or set {field}.key",
        )
    return value, None
