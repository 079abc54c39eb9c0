"""Pure: course images built from git repositories (CourseImage spec.build).

What this module decides, with no I/O (reconcile/build.py does the polling, the Jobs and the
logs; reconcile/course_status.py writes what `built_condition` and `build_status` say):

- which builds run: one per course at a time, at most N in all, the newest commit of a course
  replacing its queued one (`enqueue`, `next_builds`);
- the build Job: one buildah pod with the least privilege buildah needs (`build_job`);
- the short-lived ECR push Secret the operator makes from ECR's authorization token;
- what a finished pod says (`parse_result`, `failing_step`, masked and bounded `log_tail`);
- the `Built` condition and `status.build`.

spec.image and a build: with spec.build, spec.image names the repository builds are pushed to
and the tag learners follow. A build pushes `<repository>:<course>-<short commit>` (kept per
course by the ECR lifecycle rules) and then moves spec.image's tag to it; the resolver follows
that tag like any other, so a failed build, which pushes nothing, changes nothing learners get.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ..conditions import Cond
from .courses import CourseRecord
from .lifecycle import build_prefix

REBUILD_ANNOTATION = "coursehub.dev/rebuild"
COURSE_LABEL = "coursehub.dev/build-for"  # value: the CourseImage's uid (names may be 63+ long)
COMMIT_ANNOTATION = "coursehub.dev/commit"
COURSE_ANNOTATION = "coursehub.dev/course"  # namespace/name, for people and for a restart
HISTORY = 5
SHORT = 12  # hex digits of a commit in tags and Job names (git's 7 collide in big repositories)
LOG_LINES = 40
LOG_BYTES = 4000
MASK = "********"
WORKSPACE = "/workspace"
STORAGE = "/var/lib/containers"
GIT_SECRET_DIR = "/run/coursehub/git"
PUSH_SECRET_DIR = "/run/coursehub/push"

Key = tuple[str, str]


# -- which builds run ------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildRequest:
    key: Key
    commit: str
    seq: int  # order of arrival: builds start first come, first served
    why: str = "poll"  # poll | webhook | rebuild | first


def enqueue(
    queued: Mapping[Key, BuildRequest], req: BuildRequest
) -> tuple[dict[Key, BuildRequest], BuildRequest | None]:
    """The queue with `req` in it, and the request it superseded (a course's newer commit replaces
    its queued one: two quick commits make one build, of the newest). The superseded request's
    place in the line is kept, so a busy repository is not starved by its own pushes."""
    out = dict(queued)
    old = out.get(req.key)
    if old is not None and old.commit == req.commit and req.why != "rebuild":
        return out, None
    out[req.key] = replace(req, seq=old.seq) if old is not None else req
    return out, old if old is not None and old.commit != req.commit else None


def next_builds(queued: Mapping[Key, BuildRequest], running: Iterable[Key], limit: int) -> list[BuildRequest]:
    """The queued builds to start now: at most `limit` running in all, one per course (a course's
    next commit waits for its running build, whose push it would race)."""
    busy = set(running)
    free = limit - len(busy)
    if free <= 0:
        return []
    waiting = sorted((r for k, r in queued.items() if k not in busy), key=lambda r: (r.seq, r.key))
    return waiting[:free]


def wants_build(
    latest: str | None,
    last_built: str | None,
    running: str | None,
    queued: str | None,
) -> bool:
    """Whether the newest commit `latest` still needs a build: not built yet (good or failed),
    nor running, nor queued. A commit that failed is not retried by itself (the next commit or a
    rebuild annotation tries again): a broken Dockerfile must not loop."""
    return latest is not None and latest not in (last_built, running, queued)


def parse_ls_remote(output: str, ref: str) -> str | None:
    """The commit `ref` names in `git ls-remote` output: a branch before a tag of the same name,
    an annotated tag's peeled commit (`^{}`) before the tag object."""
    refs: dict[str, str] = {}
    for line in output.splitlines():
        sha, _, name = line.partition("\t")
        if re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", sha):
            refs[name.strip()] = sha
    names = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    for name in names:
        for candidate in (name + "^{}", name):
            if candidate in refs:
                return refs[candidate]
    return None


# git's closing advice after any remote failure: never the reason, so never the line shown.
_GIT_BOILERPLATE = (
    "fatal: Could not read from remote repository.",
    "Please make sure you have the correct access rights",
    "and the repository exists.",
)
_HOST_KEY_CHANGED = re.compile(r"Host key for (\S+) has changed")
_HOST_KEY_UNKNOWN = re.compile(r"No (\S+) host key is known for (\S+)")
_HOST_KEY_SENT = re.compile(
    r"The fingerprint for the (\S+) key sent by the remote host is\s+(SHA256:\S+?)\.?$", re.M
)


def git_failure(stderr: str, url: str, secret: str | None) -> tuple[str, str]:
    """(reason, message) for a failed `git ls-remote` of `url` from its (masked) stderr, naming
    the field to fix. `secret`: the name in spec.build.git.secretRef, if any.

    ssh host key verification failures say so (HostKeyVerificationFailed), naming the Secret's
    `known_hosts`: with StrictHostKeyChecking=yes git only says it cannot read the repository."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    ref = f"Secret {secret} (spec.build.git.secretRef)" if secret else "spec.build.git.secretRef"
    keyscan = "ssh-keyscan, checked against a fingerprint you trust"
    if any("Host key verification failed" in ln for ln in lines):
        if secret is None:
            return (
                "HostKeyVerificationFailed",
                f"git ls-remote {url}: ssh host key verification failed: an ssh:// URL needs "
                "spec.build.git.secretRef, a Secret with keys 'ssh-privatekey' and 'known_hosts'",
            )
        changed = _HOST_KEY_CHANGED.search(stderr)
        if changed:
            sent = _HOST_KEY_SENT.search(stderr)
            offered = f" (it sent {sent.group(1)} {sent.group(2)})" if sent else ""
            return (
                "HostKeyVerificationFailed",
                f"git ls-remote {url}: ssh host key verification failed: the host key of "
                f"{changed.group(1)}{offered} is not the one key 'known_hosts' of {ref} names for it; "
                f"nothing is fetched or built until key 'known_hosts' holds the server's public host "
                f"key ({keyscan})",
            )
        unknown = _HOST_KEY_UNKNOWN.search(stderr)
        what = f"no {unknown.group(1)} key for {unknown.group(2)}" if unknown else "no key for this server"
        return (
            "HostKeyVerificationFailed",
            f"git ls-remote {url}: ssh host key verification failed: key 'known_hosts' of {ref} has "
            f"{what}; add the server's public host key, a line '[host]:port ssh-ed25519 AAAA...' "
            f"({keyscan})",
        )
    bad_key = next((ln for ln in lines if ln.startswith("Load key")), None)
    if bad_key is not None:
        return (
            "SourceUnauthorized",
            f"git ls-remote {url}: key 'ssh-privatekey' of {ref} is not a private key ssh can read "
            f"({bad_key.split(': ', 2)[-1][:100]}): store the whole key file, its last newline included",
        )
    if any("Permission denied (publickey" in ln for ln in lines):
        return (
            "SourceUnauthorized",
            f"git ls-remote {url}: the ssh server refused the key"
            + (
                f" in 'ssh-privatekey' of {ref}: add its public key to the repository (a deploy key)"
                if secret
                else ": set spec.build.git.secretRef to a Secret with 'ssh-privatekey' and 'known_hosts'"
            ),
        )
    useful = [ln for ln in lines if not ln.startswith(_GIT_BOILERPLATE)] or lines
    why = useful[-1][:300] if useful else "no message"
    unauthorized = "Authentication" in why or "could not read Username" in why
    return (
        "SourceUnauthorized" if unauthorized else "SourceUnavailable",
        f"git ls-remote {url} failed: {why}; check spec.build.git.url"
        + (" and spec.build.git.secretRef" if unauthorized else ""),
    )


def rebuild_requested(annotations: Mapping[str, str] | None, acted_on: str | None) -> str | None:
    """The annotation value to act on, if `coursehub.dev/rebuild` holds one not acted on yet."""
    value = (annotations or {}).get(REBUILD_ANNOTATION)
    if value and value != acted_on:
        return value
    return None


# -- names ---------------------------------------------------------------------------------------
def split_image(image: str) -> tuple[str, str]:
    """`registry/repo:tag` -> (`registry/repo`, `tag`). spec.image has a tag with spec.build (CEL)."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag or "@" in image:
        raise ValueError(f"spec.image {image!r}: with spec.build give '<repository>:<tag>'")
    return name, tag


def build_tag(slug: str, commit: str) -> str:
    """`<course>-<short commit>`: the prefix the ECR lifecycle rules keep `retention.keep` of."""
    return build_prefix(slug) + commit[:SHORT]


def cache_repository(repository: str) -> str:
    """Where buildah keeps the layer cache (--cache-to/--cache-from): beside the course's
    repository, so cache tags never mix with build tags or their lifecycle rules."""
    return repository + "-buildcache"


def job_name(course_name: str, commit: str, attempt: str = "") -> str:
    """A DNS label, unique per course, commit and rebuild (`attempt`): `build-<name>-<commit>-<h>`."""
    h = hashlib.sha256(f"{course_name}\0{commit}\0{attempt}".encode()).hexdigest()[:6]
    stem = re.sub(r"[^a-z0-9-]", "-", course_name.lower())[:30].strip("-") or "course"
    return f"build-{stem}-{commit[:SHORT]}-{h}"


def registry_host(repository: str) -> str:
    first = repository.split("/", 1)[0]
    return (
        first if ("." in first or ":" in first or first == "localhost") and "/" in repository else "docker.io"
    )


# -- the build pod -------------------------------------------------------------------------------
# The script gets every value from the environment or its arguments ("$@": the --build-arg
# pairs), never spliced into its text, so nothing in a spec can become shell code.
BUILD_SCRIPT = r"""set -eu
echo "coursehub build: $GIT_URL $GIT_REF at $GIT_COMMIT"
cd "$WORKSPACE"
git init -q src
cd src
# No redirects: a token goes to the repository's host and nowhere else. The header travels in
# git's environment config, never on a command line (ps) or in a file.
export GIT_CONFIG_COUNT=2 GIT_CONFIG_KEY_0=http.followRedirects GIT_CONFIG_VALUE_0=false
export GIT_CONFIG_KEY_1=protocol.file.allow GIT_CONFIG_VALUE_1=never
if [ -n "${GIT_TOKEN:-}" ]; then
  AUTH=$(printf '%s:%s' "${GIT_USERNAME:-x-access-token}" "$GIT_TOKEN" | base64 | tr -d '\n')
  export GIT_CONFIG_COUNT=3 GIT_CONFIG_KEY_2=http.extraHeader GIT_CONFIG_VALUE_2="Authorization: Basic $AUTH"
fi
if [ -f "$GIT_SECRET_DIR/ssh-privatekey" ]; then
  export GIT_SSH_COMMAND="ssh -i $GIT_SECRET_DIR/ssh-privatekey -o IdentitiesOnly=yes \
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$GIT_SECRET_DIR/known_hosts"
fi
if [ -n "${GIT_CA_BUNDLE:-}" ]; then
  # A private CA of an internal git server, added to (not replacing) the system's.
  cat /etc/ssl/certs/ca-certificates.crt > /tmp/git-ca.pem 2>/dev/null || true
  printf '%s\n' "$GIT_CA_BUNDLE" >> /tmp/git-ca.pem
  export GIT_SSL_CAINFO=/tmp/git-ca.pem
fi
git remote add origin "$GIT_URL"
echo "STEP clone: fetching $GIT_COMMIT"
if ! git fetch -q --depth 1 origin "$GIT_COMMIT" 2>/dev/null; then
  git fetch -q origin "$GIT_REF"
fi
git -c advice.detachedHead=false checkout -q "$GIT_COMMIT"
unset GIT_TOKEN AUTH GIT_CONFIG_VALUE_2
export GIT_CONFIG_COUNT=2
CONTEXT="$WORKSPACE/src/${GIT_PATH:-.}"
TLS=""
if [ "$REGISTRY_INSECURE" = "true" ]; then TLS="--tls-verify=false"; fi
if [ -f "$PUSH_SECRET_DIR/.dockerconfigjson" ]; then
  export REGISTRY_AUTH_FILE="$PUSH_SECRET_DIR/.dockerconfigjson"
fi
B="buildah --storage-driver $STORAGE_DRIVER"
$B bud $TLS --isolation chroot --network host --layers \
  --cache-from "$CACHE_REPOSITORY" --cache-to "$CACHE_REPOSITORY" \
  --label "dev.coursehub.commit=$GIT_COMMIT" --label "org.opencontainers.image.revision=$GIT_COMMIT" \
  -f "$CONTEXT/$DOCKERFILE" -t "$BUILD_IMAGE" "$@" "$CONTEXT"
$B push $TLS --digestfile /tmp/digest "$BUILD_IMAGE" "docker://$BUILD_IMAGE"
$B push $TLS "$BUILD_IMAGE" "docker://$FOLLOW_IMAGE"
printf 'digest=%s\ncommit=%s\n' "$(cat /tmp/digest)" "$GIT_COMMIT" > /dev/termination-log
echo "coursehub build: pushed $BUILD_IMAGE and $FOLLOW_IMAGE ($(cat /tmp/digest))"
"""


@dataclass(frozen=True)
class BuildOptions:
    """Operator settings that shape every build Job."""

    image: str  # the buildah image (settings.build_image)
    insecure_registries: tuple[str, ...] = ()
    deadline_seconds: int = 1800
    ttl_seconds: int = 3600
    privileged: bool = False  # overlay storage needs it; vfs with seccomp Unconfined does not
    node_selector: tuple[str, ...] = ()  # label=value pairs
    git_ca: str = ""  # PEM certificates trusted for git servers besides the system's (public data)


def _is_insecure(host: str, insecure: Iterable[str]) -> bool:
    return host in set(insecure)


def build_job(
    course: CourseRecord,
    commit: str,
    *,
    name: str,
    options: BuildOptions,
    push_secret: str | None = None,
    owner: dict | None = None,
) -> dict:
    """The build Job of `course` at `commit`, in the course's namespace (where its Secrets are:
    referenced there, never copied).

    Least privilege that works for buildah in a pod (docs/builds.md): not privileged, root inside
    the container only, capabilities limited to what a chroot build needs, seccomp Unconfined
    (RuntimeDefault refuses unshare(CLONE_NEWUSER), which buildah needs), vfs storage (overlay
    would need privileged), no ServiceAccount token, no Service links.
    `push_secret`: a dockerconfigjson Secret to push with (spec.build.pushSecretRef, or the
    operator's ECR push Secret)."""
    spec = course.spec
    b = spec.build
    assert b is not None
    repository, follow_tag = split_image(spec.image)
    build_image = f"{repository}:{build_tag(spec.course, commit)}"
    env: list[dict] = [
        {"name": "GIT_URL", "value": b.git.url},
        {"name": "GIT_REF", "value": b.git.ref},
        {"name": "GIT_COMMIT", "value": commit},
        {"name": "GIT_PATH", "value": b.git.path or "."},
        {"name": "DOCKERFILE", "value": b.dockerfile},
        {"name": "BUILD_IMAGE", "value": build_image},
        {"name": "FOLLOW_IMAGE", "value": f"{repository}:{follow_tag}"},
        {"name": "CACHE_REPOSITORY", "value": cache_repository(repository)},
        {
            "name": "REGISTRY_INSECURE",
            "value": str(_is_insecure(registry_host(repository), options.insecure_registries)).lower(),
        },
        {"name": "WORKSPACE", "value": WORKSPACE},
        {"name": "GIT_SECRET_DIR", "value": GIT_SECRET_DIR},
        {"name": "PUSH_SECRET_DIR", "value": PUSH_SECRET_DIR},
        {"name": "HOME", "value": WORKSPACE},
        {"name": "BUILDAH_ISOLATION", "value": "chroot"},
        {"name": "STORAGE_DRIVER", "value": "overlay" if options.privileged else "vfs"},
    ]
    if options.git_ca:
        env.append({"name": "GIT_CA_BUNDLE", "value": options.git_ca})
    volumes: list[dict] = [
        {"name": "workspace", "emptyDir": {}},
        {"name": "storage", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict] = [
        {"name": "workspace", "mountPath": WORKSPACE},
        {"name": "storage", "mountPath": STORAGE},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if b.git.secret_ref is not None:
        secret = b.git.secret_ref.name
        # Token keys through secretKeyRef (optional: an ssh Secret has none); ssh keys as files.
        env += [
            {
                "name": "GIT_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": secret, "key": "token", "optional": True}},
            },
            {
                "name": "GIT_USERNAME",
                "valueFrom": {"secretKeyRef": {"name": secret, "key": "username", "optional": True}},
            },
        ]
        volumes.append(
            {
                "name": "git-secret",
                # The whole Secret (token or ssh keys), read-only: listing items would fail the
                # mount for whichever kind of Secret lacks them.
                "secret": {"secretName": secret, "defaultMode": 0o400},
            }
        )
        mounts.append({"name": "git-secret", "mountPath": GIT_SECRET_DIR, "readOnly": True})
    if push_secret is not None:
        volumes.append(
            {
                "name": "push-secret",
                "secret": {
                    "secretName": push_secret,
                    "defaultMode": 0o400,
                    "items": [{"key": ".dockerconfigjson", "path": ".dockerconfigjson"}],
                },
            }
        )
        mounts.append({"name": "push-secret", "mountPath": PUSH_SECRET_DIR, "readOnly": True})
    args: list[str] = []
    for arg in b.build_args or []:
        args += ["--build-arg", f"{arg.name}={arg.value}"]
    resources: dict = {}
    if b.resources is not None:
        amounts = {k: v for k, v in (("cpu", b.resources.cpu), ("memory", b.resources.memory)) if v}
        if amounts:
            resources = {"requests": dict(amounts), "limits": dict(amounts)}
    if options.privileged:
        security: dict = {"privileged": True, "runAsUser": 0}
        pod_security: dict = {}
    else:
        security = {
            "privileged": False,
            "runAsUser": 0,
            "allowPrivilegeEscalation": False,
            # What buildah needs for a chroot build as root (file ownership in layers, setuid
            # for RUN steps as other users, chroot): containerd's defaults minus network, mknod
            # and audit ones.
            "capabilities": {
                "drop": ["ALL"],
                "add": [
                    "CHOWN",
                    "DAC_OVERRIDE",
                    "FOWNER",
                    "FSETID",
                    "SETUID",
                    "SETGID",
                    "SETFCAP",
                    "SYS_CHROOT",
                    "KILL",
                ],
            },
            "seccompProfile": {"type": "Unconfined"},
        }
        pod_security = {"seccompProfile": {"type": "Unconfined"}}
    labels = {
        "app.kubernetes.io/name": "coursehub-build",
        "app.kubernetes.io/managed-by": "coursehub",
        COURSE_LABEL: course.uid,
    }
    meta: dict = {
        "name": name,
        "namespace": course.namespace,
        "labels": labels,
        "annotations": {COMMIT_ANNOTATION: commit, COURSE_ANNOTATION: f"{course.namespace}/{course.name}"},
    }
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 0,  # a failed build is reported, not retried: the next commit retries
            "activeDeadlineSeconds": options.deadline_seconds,
            "ttlSecondsAfterFinished": options.ttl_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": dict(p.split("=", 1) for p in options.node_selector if "=" in p),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security,
                    "volumes": volumes,
                    "containers": [
                        {
                            "name": "build",
                            "image": options.image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/bin/sh", "-c", BUILD_SCRIPT, "build", *args],
                            "env": env,
                            "volumeMounts": mounts,
                            "resources": resources,
                            "securityContext": security,
                            "terminationMessagePolicy": "File",
                        }
                    ],
                },
            },
        },
    }


def ecr_push_secret(name: str, namespace: str, registry: str, token: str, owner: dict) -> dict:
    """A dockerconfigjson Secret with an ECR authorization token (base64 'AWS:<password>', valid
    12 hours), owned by the build Job so it goes with it: the operator's own push credentials,
    handed to one build, never a user's Secret copied."""
    config = {"auths": {registry: {"auth": token}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "coursehub",
                "app.kubernetes.io/name": "coursehub-build",
            },
            "ownerReferences": [owner],
        },
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


# -- what a finished build says ------------------------------------------------------------------
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def parse_result(termination_message: str | None) -> dict[str, str]:
    """`digest` and `commit` from the build container's termination message (key=value lines);
    only well-formed values (the pod could write anything there)."""
    out: dict[str, str] = {}
    for line in (termination_message or "").splitlines()[:8]:
        k, _, v = line.partition("=")
        v = v.strip()
        if k == "digest" and _DIGEST.match(v):
            out["digest"] = v
        elif k == "commit" and re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", v):
            out["commit"] = v
    return out


_STEP = re.compile(r"^(STEP \d+(/\d+)?: .*|STEP clone: .*)$")


def failing_step(log: str) -> str | None:
    """The last step buildah (or the clone) started: where the build failed."""
    last = None
    for line in log.splitlines():
        line = line.strip()
        if _STEP.match(line):
            last = line
    if last is not None and len(last) > 300:
        last = last[:300] + "..."
    return last


def pod_refused(job: Mapping, events: Iterable[Mapping], namespace: str) -> tuple[str, str] | None:
    """(reason, message) when the API server refuses the build Job's pod (Pod Security admission,
    a ResourceQuota, a bad securityContext...): the Job then has no pod and would only say so at
    its deadline. Read from the Job's FailedCreate Events while no pod of it exists; None while a
    pod runs or ran, or nothing was refused yet."""
    status = job.get("status") or {}
    if any(status.get(k) for k in ("active", "succeeded", "failed", "ready", "terminating")):
        return None
    name = (job.get("metadata") or {}).get("name")
    refused = [
        e
        for e in events
        if e.get("reason") == "FailedCreate"
        and (e.get("involvedObject") or {}).get("kind") == "Job"
        and (e.get("involvedObject") or {}).get("name") == name
    ]
    if not refused:
        return None
    last = max(refused, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    said = " ".join(str(last.get("message") or "").split())
    said = said.removeprefix("Error creating: ")[:600]
    if "violates PodSecurity" in said:
        level = re.search(r'violates PodSecurity "(\w+)', said)
        fix = (
            f"the Pod Security level of namespace {namespace}"
            + (f" ({level.group(1)})" if level else "")
            + " refuses it; buildah needs seccomp Unconfined (above baseline): label the namespace "
            "pod-security.kubernetes.io/enforce=privileged, or move the CourseImage to a namespace "
            "set aside for builds"
        )
    elif "exceeded quota" in said:
        fix = (
            f"a ResourceQuota of namespace {namespace} refuses it: raise the quota or lower "
            "spec.build.resources"
        )
    elif "must specify limits" in said or "must specify requests" in said:
        fix = f"a ResourceQuota of namespace {namespace} needs spec.build.resources to set them"
    else:
        fix = f"the API server refused it in namespace {namespace}"
    return (
        "BuildPodRefused",
        f"its pod was refused: {said}; {fix}; then push a commit or set {REBUILD_ANNOTATION}",
    )


# Credentials that may show up in a log whatever the Secrets hold: URL userinfo, Authorization
# headers, registry auth strings.
_GENERIC = [
    (re.compile(r"(://)[^/\s:@]+:[^/\s@]+@"), r"\1" + MASK + "@"),
    (re.compile(r"(?i)(authorization:\s*(basic|bearer)\s+)\S+"), r"\1" + MASK),
    (re.compile(r'(?i)("auth"\s*:\s*")[^"]+'), r"\1" + MASK),
]


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value (and its base64 form) and generic credential shapes masked."""
    values = set()
    for s in secrets:
        s = s.strip()
        if len(s) >= 4:  # shorter values would mask ordinary words
            values.add(s)
            values.add(base64.b64encode(s.encode()).decode().rstrip("="))
    for v in sorted(values, key=len, reverse=True):
        text = text.replace(v, MASK)
    for pattern, repl in _GENERIC:
        text = pattern.sub(repl, text)
    return text


def log_tail(log: str, secrets: Iterable[str], lines: int = LOG_LINES, limit: int = LOG_BYTES) -> str:
    """The last `lines` lines of a build log, masked, at most `limit` characters."""
    tail = "\n".join(log.splitlines()[-lines:])
    tail = mask(tail, secrets)
    if len(tail) > limit:
        tail = "..." + tail[-(limit - 3) :]
    return tail


def failure_message(log: str, secrets: Iterable[str], why: str = "") -> str:
    step = failing_step(log)
    head = f"failed at {mask(step, secrets)}" if step else "failed"
    if why:
        head += f" ({why})"
    return head + "; last lines:\n" + log_tail(log, secrets)


# -- status --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildRecordData:
    commit: str
    result: str  # Queued | Running | Succeeded | Failed
    tag: str | None = None
    digest: str | None = None
    started: str | None = None
    duration_seconds: int | None = None
    job: str | None = None
    reason: str | None = None
    message: str | None = None

    def wire(self) -> dict:
        out = {
            "commit": self.commit,
            "result": self.result,
            "tag": self.tag,
            "digest": self.digest,
            "started": self.started,
            "durationSeconds": self.duration_seconds,
            "job": self.job,
            "reason": self.reason,
            "message": self.message,
        }
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_wire(cls, d: Mapping) -> BuildRecordData:
        return cls(
            commit=str(d.get("commit", "")),
            result=str(d.get("result", "Failed")),
            tag=d.get("tag"),
            digest=d.get("digest"),
            started=d.get("started"),
            duration_seconds=d.get("durationSeconds"),
            job=d.get("job"),
            reason=d.get("reason"),
            message=d.get("message"),
        )


@dataclass(frozen=True)
class BuildState:
    """What the operator knows about one course's builds (kept in the index, rebuilt from
    status.build after a restart)."""

    ref: str
    latest: str | None = None  # newest commit of the ref seen
    problem: tuple[str, str] | None = None  # (reason, message): why no build can run (poll failed...)
    good: BuildRecordData | None = None  # the last good build: what learners get
    current: BuildRecordData | None = None  # queued or running
    history: tuple[BuildRecordData, ...] = field(default_factory=tuple)  # finished, newest first
    rebuild: str | None = None  # annotation value acted on
    # (reason, message): the course's own webhook secret cannot be used, so its pushes are
    # refused (spec.build.git.webhookSecretRef; reconcile/webhook.CourseWebhookSecrets)
    webhook_problem: tuple[str, str] | None = None

    @property
    def last(self) -> BuildRecordData | None:
        return self.history[0] if self.history else None

    def finished(self, rec: BuildRecordData) -> BuildState:
        """`rec` finished: it enters the history (newest first, 5 kept); a good one becomes `good`.
        A failed build leaves `good` alone: learners keep the last good digest."""
        history = (rec, *[h for h in self.history if h.job != rec.job or rec.job is None])[:HISTORY]
        cur = None if self.current is not None and self.current.job == rec.job else self.current
        good = rec if rec.result == "Succeeded" else self.good
        return replace(self, history=history, current=cur, good=good)

    @classmethod
    def from_status(cls, ref: str, status: Mapping | None) -> BuildState:
        """The state a status.build written earlier says (an operator restart)."""
        b = (status or {}).get("build") or {}
        history = tuple(BuildRecordData.from_wire(h) for h in (b.get("history") or [])[:HISTORY])
        good = next((h for h in history if h.result == "Succeeded"), None)
        if good is None and b.get("commit") and b.get("digest"):
            good = BuildRecordData(commit=b["commit"], result="Succeeded", digest=b["digest"])
        return cls(
            ref=b.get("ref") or ref,
            latest=b.get("latestCommit"),
            good=good,
            history=history,
            rebuild=b.get("rebuild"),
        )


def build_status(state: BuildState) -> dict:
    out: dict = {"ref": state.ref}
    if state.latest:
        out["latestCommit"] = state.latest
    if state.good is not None:
        out["commit"] = state.good.commit
        if state.good.digest:
            out["digest"] = state.good.digest
    if state.current is not None:
        out["current"] = state.current.wire()
    if state.last is not None:
        out["last"] = state.last.wire()
    if state.history:
        out["history"] = [h.wire() for h in state.history]
    if state.rebuild:
        out["rebuild"] = state.rebuild
    return out


def built_condition(state: BuildState) -> Cond:
    """Built: True once the newest commit is built and pushed; False while one is queued or
    running (transient reasons), when the newest build failed (BuildFailed, naming the step), or
    when the course's own webhook secret is unusable (WebhookSecret*: its pushes are refused)."""
    cur, last, good = state.current, state.last, state.good
    serving = f"; learners get {good.commit[:SHORT]} ({good.digest})" if good and good.digest else ""
    if cur is not None and cur.result == "Running":
        return Cond("Built", False, "Building", f"building {cur.commit[:SHORT]} in Job {cur.job}{serving}")
    if cur is not None:
        return Cond("Built", False, "BuildQueued", f"{cur.commit[:SHORT]} waits for a build slot{serving}")
    if state.problem is not None and state.problem[0] == "BuildsDisabled":
        return Cond("Built", False, *state.problem)
    if last is not None and last.result == "Failed":
        return Cond(
            "Built",
            False,
            last.reason or "BuildFailed",
            f"the build of {last.commit[:SHORT]} (Job {last.job}) {last.message or 'failed'}{serving}",
        )
    if state.webhook_problem is not None and (good is not None or state.problem is None):
        # Builds go on by polling, but a push webhook the course author configured is refused:
        # a configuration to fix, not a state that settles (Warning Event, Argo CD Degraded).
        reason, message = state.webhook_problem
        return Cond("Built", False, reason, message + serving)
    if good is not None:
        return Cond("Built", True, "Built", f"{good.commit[:SHORT]} built as {good.tag} ({good.digest})")
    if state.problem is not None:
        return Cond("Built", False, *state.problem)
    return Cond("Built", False, "BuildQueued", f"waiting for the first commit of {state.ref}")


# Reasons of Built that settle by themselves (Argo CD: Progressing, no Warning Event).
TRANSIENT = frozenset({"BuildQueued", "Building"})


def with_build(conds: list[Cond], built: Cond, state: BuildState, serving: bool) -> list[Cond]:
    """A course's conditions with Built added. Until a built image is served (`serving`: the
    course has a resolved digest), ImageResolved and Ready say that the build comes first
    (WaitingForBuild, or the build's own reason), not ImageNotFound. Once a digest is served, a
    newer build running or failing leaves Ready alone (learners start the course with the last
    good image) and Built says so."""
    out: list[Cond] = []
    transient = built.reason in TRANSIENT or built.status is True
    for c in conds:
        if not serving and c.status is not True:
            if c.type == "ImageResolved":
                c = Cond(
                    "ImageResolved",
                    None if transient else False,
                    "WaitingForBuild",
                    f"spec.image is pushed by the build ({built.reason}): {c.message}",
                )
            elif c.type == "Ready":
                reason = "WaitingForBuild" if built.status is True else built.reason
                c = Cond("Ready", None if transient else False, reason, f"Built: {built.message}")
        out.append(c)
    return [*out, built]
