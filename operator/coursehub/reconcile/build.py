"""Course builds: poll git refs, run build Jobs, read their results (I/O only; desired/build.py decides).

- Polling: `git ls-remote <url> <ref>`, one poll per repository, ref and credentials per
  interval (the smallest spec.build.pollSeconds of its courses), shared by every CourseImage
  of that repository; a signed push webhook (reconcile/webhook.py) makes it poll at once.
- Builds: the newest commit of each course is queued (a newer one replaces a queued one);
  at most settings.build_concurrency Jobs run; each Job's pod reports its digest in its
  termination message; a failure's last log lines (masked) go into status.build.
- Results go into the index (`index.builds`); the one status writer (course_status.py) writes
  them. A good build asks the resolver to resolve spec.image's tag now, which the build moved.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

from .. import aio
from ..api.common import now_rfc3339
from ..desired import build as plan
from ..desired.build import BuildRecordData, BuildRequest, BuildState
from ..kube import EVENTS, PODS, SECRETS, Kube, KubeError, NotFound, Resource, owner_reference
from ..registry import aws
from ..registry.policy import host_matches, is_global_address
from ..registry.reference import parse_ecr_host
from ..settings import Settings
from ..state import Index, Key
from .webhook import CourseWebhookSecrets, Push, ref_matches, repo_key

log = logging.getLogger(__name__)

JOBS = Resource("batch", "v1", "jobs", "Job")
GIT_TIMEOUT = 30.0
POLL_CONCURRENCY = 4
WATCH_SECONDS = 3.0
LOG_TAIL_LINES = 200


@dataclass
class Group:
    """One repository, ref and credential: polled once per interval for all its courses."""

    url: str
    ref: str
    namespace: str
    secret: str | None
    members: set[Key] = field(default_factory=set)
    interval: float = 120.0
    due: float = 0.0  # monotonic time of the next poll
    polls: int = 0


GroupKey = tuple[str, str, str, str | None]


class GitProblem(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class BuildController:
    def __init__(
        self, kube: Kube, index: Index, settings: Settings, on_built: Callable[[Key], None] | None = None
    ):
        self.kube = kube
        self.index = index
        self.settings = settings
        self.on_built = on_built or (lambda key: None)
        self.groups: dict[GroupKey, Group] = {}
        self.member_of: dict[Key, GroupKey] = {}
        self.queued: dict[Key, BuildRequest] = {}
        self.running: dict[Key, str] = {}  # course -> Job name
        self.adopted: set[str] = set()  # namespaces whose existing build Jobs were looked for
        self.pending_rebuild: dict[Key, str] = {}  # rebuilds asked before the commit was known
        self.seq = 0
        self.wakeup = asyncio.Event()
        self.jobs_started = 0
        # The courses' own push webhook secrets (read when a push names their repository, and
        # at each poll so Built says when one is unusable); which ref each course was checked for.
        self.webhook_secrets = CourseWebhookSecrets(kube, index, self._webhook_problem)
        self.webhook_ref_of: dict[Key, tuple[str, str]] = {}

    # -- courses come and go -------------------------------------------------------------------
    def sync(self, key: Key) -> None:
        """A CourseImage changed (or is gone): follow its spec.build."""
        course = self.index.courses.get(key)
        raw = self.index.raw_courses.get(key) or {}
        if course is None or course.deleting or course.spec.build is None:
            self._forget(key)
            return
        b = course.spec.build
        state = self.index.builds.get(key)
        if state is None:
            state = BuildState.from_status(b.git.ref, raw.get("status"))
        if state.ref != b.git.ref:
            state = replace(state, ref=b.git.ref, latest=None)
        if not self.settings.build_image:
            state = replace(
                state,
                problem=(
                    "BuildsDisabled",
                    "builds are off in this operator: set COURSEHUB_BUILD_IMAGE (the chart's build.image) "
                    "to a buildah image",
                ),
            )
        elif state.problem is not None and state.problem[0] == "BuildsDisabled":
            state = replace(state, problem=None)
        gkey: GroupKey = (
            repo_key(b.git.url),
            b.git.ref,
            course.namespace,
            b.git.secret_ref.name if b.git.secret_ref else None,
        )
        old = self.member_of.get(key)
        if old != gkey:
            if old is not None:
                self._leave(key, old)
            g = self.groups.get(gkey)
            if g is None:
                g = self.groups[gkey] = Group(b.git.url, b.git.ref, course.namespace, gkey[3])
            g.members.add(key)
            g.due = 0.0  # a new course polls now
            self.member_of[key] = gkey
        self.groups[gkey].interval = min(
            self.index.courses[k].spec.build.poll_seconds  # type: ignore[union-attr]
            for k in self.groups[gkey].members
            if k in self.index.courses and self.index.courses[k].spec.build is not None
        )
        own = b.git.webhook_secret_ref
        if own is None or not self.settings.webhook_port:
            self.webhook_ref_of.pop(key, None)
            state = replace(state, webhook_problem=None)
        elif self.webhook_ref_of.get(key) != (own.name, own.key):
            self.webhook_ref_of[key] = (own.name, own.key)
            self.groups[gkey].due = 0.0  # the next poll, now, reads the newly named Secret
        rebuild = plan.rebuild_requested((raw.get("metadata") or {}).get("annotations"), state.rebuild)
        if rebuild is not None:
            state = replace(state, rebuild=rebuild)
        self._set(key, state)
        if rebuild is not None:
            if state.latest:
                self._enqueue(key, state.latest, "rebuild", rebuild)
            else:  # the commit is not known yet (just started): the next poll, now, builds it
                self.pending_rebuild[key] = rebuild
                self.groups[gkey].due = 0.0
        self.wakeup.set()

    def _leave(self, key: Key, gkey: GroupKey) -> None:
        g = self.groups.get(gkey)
        if g is not None:
            g.members.discard(key)
            if not g.members:
                del self.groups[gkey]
        self.member_of.pop(key, None)

    def _forget(self, key: Key) -> None:
        gkey = self.member_of.get(key)
        if gkey is not None:
            self._leave(key, gkey)
        self.queued.pop(key, None)
        self.pending_rebuild.pop(key, None)
        self.webhook_ref_of.pop(key, None)
        if key in self.index.builds and key not in self.running:
            del self.index.builds[key]

    def _set(self, key: Key, state: BuildState) -> None:
        if self.index.builds.get(key) != state:
            self.index.builds[key] = state
            self.index.course_changed(key)

    def _enqueue(self, key: Key, commit: str, why: str, attempt: str = "") -> None:
        self.seq += 1
        self.queued, gone = plan.enqueue(
            self.queued, BuildRequest(key, commit, self.seq, why + ":" + attempt)
        )
        if gone is not None:
            log.info("build of %s/%s: %s supersedes queued %s", *key, commit[:12], gone.commit[:12])
        else:
            log.info("build of %s/%s: %s queued (%s)", *key, commit[:12], why)
        state = self.index.builds.get(key)
        if state is not None and key not in self.running:
            self._set(key, replace(state, current=BuildRecordData(commit=commit, result="Queued")))
        self.wakeup.set()

    # -- webhooks ------------------------------------------------------------------------------------
    def _webhook_problem(self, key: Key, problem: tuple[str, str] | None) -> None:
        """What reading a course's own webhook secret found (None: usable)."""
        state = self.index.builds.get(key)
        if state is not None and key in self.webhook_ref_of and state.webhook_problem != problem:
            if problem is not None:
                log.warning("push webhooks of %s/%s are refused: %s", *key, problem[1])
            self._set(key, replace(state, webhook_problem=problem))

    def on_push(self, push: Push) -> int:
        """A verified push: the groups of that repository and ref poll now. Returns their courses."""
        names = {repo_key(u) for u in push.repositories}
        woken = 0
        for (rk, ref, _ns, _s), g in self.groups.items():
            if rk in names and ref_matches(push.ref, ref):
                g.due = 0.0
                woken += len(g.members)
        if woken:
            self.wakeup.set()
        return woken

    # -- the loops -------------------------------------------------------------------------------------
    async def run(self) -> None:
        polls = asyncio.Semaphore(POLL_CONCURRENCY)
        in_flight: set[GroupKey] = set()
        background: set[asyncio.Task] = set()
        last_watch = 0.0
        while True:
            now = time.monotonic()
            for gkey, g in list(self.groups.items()):
                if g.due <= now and gkey not in in_flight and self.settings.build_image:
                    in_flight.add(gkey)
                    g.due = now + g.interval

                    async def one(gkey: GroupKey = gkey) -> None:
                        try:
                            async with polls:
                                await self._poll(gkey)
                        finally:
                            in_flight.discard(gkey)

                    t = asyncio.create_task(one())
                    background.add(t)
                    t.add_done_callback(background.discard)
            await self._start_builds()
            if self.running and now - last_watch >= WATCH_SECONDS:
                last_watch = now
                await self._watch()
            next_due = min((g.due for g in self.groups.values()), default=now + 60)
            wait = max(0.05, min(next_due - time.monotonic(), WATCH_SECONDS if self.running else 60))
            await aio.wait_event(self.wakeup, wait)
            self.wakeup.clear()

    # -- polling -----------------------------------------------------------------------------------------
    async def _poll(self, gkey: GroupKey) -> None:
        g = self.groups.get(gkey)
        if g is None:
            return
        g.polls += 1
        try:
            commit = await self.ls_remote(g)
            problem = None
        except GitProblem as e:
            commit, problem = None, (e.reason, e.message)
            log.warning("polling %s %s: %s", g.url, g.ref, e.message)
        except (KubeError, OSError) as e:
            commit, problem = None, ("SourceUnavailable", f"reading spec.build.git.secretRef failed: {e}")
        for key in list(g.members):
            state = self.index.builds.get(key)
            if state is None:
                continue
            if commit is None:
                self._set(key, replace(state, problem=problem))
                continue
            state = replace(state, latest=commit, problem=None)
            self._set(key, state)
            last = state.last.commit if state.last else (state.good.commit if state.good else None)
            queued = self.queued.get(key)
            running = state.current.commit if state.current and key in self.running else None
            rebuild = self.pending_rebuild.pop(key, None)
            if plan.wants_build(commit, last, running, queued.commit if queued else None):
                self._enqueue(key, commit, "poll")
            elif rebuild is not None:
                self._enqueue(key, commit, "rebuild", rebuild)
        for key in list(g.members):  # Built says when a course's own webhook secret is unusable
            if key in self.webhook_ref_of:
                await self.webhook_secrets.check_course(key)

    async def ls_remote(self, g: Group) -> str:
        """The commit of `g.ref` (git ls-remote), after checking where the URL leads."""
        await self._check_host(g.url)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_COUNT": "2",
            # No redirects (a token would follow them) and only the URL's own protocol.
            "GIT_CONFIG_KEY_0": "http.followRedirects",
            "GIT_CONFIG_VALUE_0": "false",
            "GIT_CONFIG_KEY_1": "protocol.file.allow",
            "GIT_CONFIG_VALUE_1": "never",
            # ssh without a Secret: nothing to authenticate with, and no host trusted.
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes "
            "-o UserKnownHostsFile=/dev/null",
        }
        secrets: list[str] = []
        with tempfile.TemporaryDirectory(prefix="coursehub-git-") as tmp:
            env["HOME"] = tmp
            bundle = self._ca_bundle(tmp)
            if bundle is not None:
                env["GIT_SSL_CAINFO"] = bundle
            if g.secret is not None:
                data = await self._secret_data(g.namespace, g.secret)
                token, user = data.get("token"), data.get("username") or "x-access-token"
                if token:
                    secrets.append(token)
                    auth = base64.b64encode(f"{user}:{token}".encode()).decode()
                    env.update(
                        GIT_CONFIG_COUNT="3",
                        GIT_CONFIG_KEY_2="http.extraHeader",
                        GIT_CONFIG_VALUE_2=f"Authorization: Basic {auth}",
                    )
                elif data.get("ssh-privatekey"):
                    if not data.get("known_hosts", "").strip():
                        # StrictHostKeyChecking=yes: without it no server can be trusted.
                        raise GitProblem(
                            "HostKeyVerificationFailed",
                            f"spec.build.git.secretRef: Secret {g.secret} has 'ssh-privatekey' but no "
                            f"'known_hosts': add the server's public host key ('[host]:port ssh-ed25519 "
                            f"AAAA...', from ssh-keyscan, checked against a fingerprint you trust)",
                        )
                    secrets.append(data["ssh-privatekey"])
                    key_path, hosts_path = os.path.join(tmp, "key"), os.path.join(tmp, "known_hosts")
                    with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                        f.write(data["ssh-privatekey"])
                    with open(hosts_path, "w") as f:
                        f.write(data.get("known_hosts", ""))
                    env["GIT_SSH_COMMAND"] = (
                        f"ssh -o BatchMode=yes -o IdentitiesOnly=yes -i {key_path} "
                        f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={hosts_path}"
                    )
                else:
                    raise GitProblem(
                        "SourceUnauthorized",
                        f"spec.build.git.secretRef: Secret {g.secret} has neither key 'token' nor "
                        f"'ssh-privatekey'",
                    )
            try:
                proc = await asyncio.create_subprocess_exec(
                    "git",
                    "ls-remote",
                    "--",
                    g.url,
                    g.ref,
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            except FileNotFoundError:
                # The operator's own image lacks git: no course of any repository can be polled,
                # which is the operator's to fix, not the course author's (once an OSError that
                # blamed spec.build.git.secretRef).
                raise GitProblem(
                    "GitNotFound",
                    f"the operator has no git executable on its PATH ({env['PATH']}) to poll "
                    f"{g.url}: run an operator image with git and openssh-client (the project's "
                    f"Dockerfile installs them)",
                ) from None
            try:
                out, err = await aio.within(proc.communicate(), GIT_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise GitProblem(
                    "SourceUnavailable", f"git ls-remote {g.url} took over {GIT_TIMEOUT:g} s"
                ) from None
        if proc.returncode != 0:
            text = plan.mask(err.decode(errors="replace"), secrets).strip().splitlines()
            raise GitProblem(*plan.git_failure("\n".join(text) or f"exit {proc.returncode}", g.url, g.secret))
        commit = plan.parse_ls_remote(out.decode(errors="replace"), g.ref)
        if commit is None:
            raise GitProblem(
                "RefNotFound", f"{g.url} has no branch or tag {g.ref!r}: push it or fix spec.build.git.ref"
            )
        return commit

    def _git_ca(self) -> str:
        path = self.settings.git_ca_file
        if not path:
            return ""
        with open(path) as f:
            return f.read().strip()

    def _ca_bundle(self, tmp: str) -> str | None:
        """The system's CAs plus settings.git_ca_file, as one file for GIT_SSL_CAINFO."""
        extra = self._git_ca()
        if not extra:
            return None
        path = os.path.join(tmp, "ca.pem")
        system = "/etc/ssl/certs/ca-certificates.crt"
        with open(path, "w") as out:
            if os.path.exists(system):
                with open(system) as f:
                    out.write(f.read())
            out.write("\n" + extra + "\n")
        return path

    async def _check_host(self, url: str) -> None:
        """Course authors name the URL: it must not lead the operator to an internal address
        unless the operator allows that host (settings.git_private_hosts)."""
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        if host_matches(host, port, self.settings.git_private_hosts):
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
        except OSError as e:
            raise GitProblem("SourceUnavailable", f"spec.build.git.url: cannot resolve {host}: {e}") from None
        private = sorted({str(i[4][0]) for i in infos if not is_global_address(str(i[4][0]))})
        if private:
            raise GitProblem(
                "SourceForbidden",
                f"spec.build.git.url: {host} resolves to the internal address {private[0]}; the operator "
                f"polls only public hosts unless COURSEHUB_GIT_PRIVATE_HOSTS lists it",
            )

    async def _secret_data(self, namespace: str, name: str) -> dict[str, str]:
        try:
            secret = await self.kube.get(SECRETS, name, namespace)
        except NotFound:
            raise GitProblem(
                "SourceUnauthorized", f"spec.build.git.secretRef: Secret {name} not found in {namespace}"
            ) from None
        out = {}
        for k, v in (secret.get("data") or {}).items():
            try:
                out[k] = base64.b64decode(v).decode()
            except ValueError:
                continue
        return out

    # -- Jobs ----------------------------------------------------------------------------------------------
    async def _start_builds(self) -> None:
        for req in plan.next_builds(self.queued, self.running, self.settings.build_concurrency):
            self.queued.pop(req.key, None)
            try:
                await self._start(req)
            except Exception as e:  # one course never stops the others; it says what happened
                log.warning(
                    "starting the build of %s/%s failed: %s",
                    *req.key,
                    e,
                    exc_info=not isinstance(e, KubeError),
                )
                state = self.index.builds.get(req.key)
                if state is not None:
                    rec = BuildRecordData(
                        commit=req.commit,
                        result="Failed",
                        reason="BuildNotStarted",
                        message=f"the build Job could not be created: {str(e)[:500]}",
                    )
                    self._set(req.key, state.finished(rec))

    async def _start(self, req: BuildRequest) -> None:
        key = req.key
        course = self.index.courses.get(key)
        raw = self.index.raw_courses.get(key)
        state = self.index.builds.get(key)
        if course is None or raw is None or state is None or course.spec.build is None:
            return
        await self._adopt(course.namespace)
        if key in self.running:
            return
        name = plan.job_name(course.name, req.commit, req.why)
        assert self.settings.build_image is not None
        options = plan.BuildOptions(
            image=self.settings.build_image,
            insecure_registries=self.settings.insecure_registries,
            deadline_seconds=self.settings.build_deadline,
            privileged=self.settings.build_privileged,
            node_selector=self.settings.build_node_selector,
            git_ca=self._git_ca(),
        )
        repository, _tag = plan.split_image(course.spec.image)
        ecr = parse_ecr_host(plan.registry_host(repository))
        push_secret = course.spec.build.push_secret_ref.name if course.spec.build.push_secret_ref else None
        if ecr is not None:
            push_secret = name + "-push"
        job = plan.build_job(
            course,
            req.commit,
            name=name,
            options=options,
            push_secret=push_secret,
            owner=owner_reference(raw),
        )
        try:
            created = await self.kube.request("POST", JOBS.path(course.namespace), body=job, kind="Job")
        except KubeError as e:
            if e.status != 409:  # a Job of this name exists: a restart, adopt it
                raise
            created = await self.kube.get(JOBS, name, course.namespace)
        if ecr is not None:
            token = await self._ecr_token(*ecr)
            secret = plan.ecr_push_secret(
                push_secret or "",
                course.namespace,
                plan.registry_host(repository),
                token,
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": name,
                    "uid": created["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                },
            )
            try:
                await self.kube.request("POST", SECRETS.path(course.namespace), body=secret, kind="Secret")
            except KubeError as e:
                if e.status != 409:
                    raise
        self.jobs_started += 1
        self.running[key] = name
        log.info("build of %s/%s: %s started in Job %s (%s)", *key, req.commit[:12], name, req.why)
        rec = BuildRecordData(
            commit=req.commit,
            result="Running",
            job=name,
            started=now_rfc3339(),
            tag=plan.build_tag(course.spec.course, req.commit),
        )
        # The state as it is now: a poll may have changed it while the Job was created (e.g.
        # found the course's webhook secret missing), and that must not be overwritten.
        state = self.index.builds.get(key) or state
        self._set(key, replace(state, current=rec))
        await self.kube.event(
            raw,
            reason="BuildStarted",
            message=f"building {req.commit[:12]} of {course.spec.build.git.ref} in Job {name}",
        )

    async def _ecr_token(self, account: str, region: str) -> str:
        """ECR's authorization token (base64 'AWS:<password>', 12 hours) from the operator's own
        AWS identity (IRSA in production)."""

        def call() -> str:
            client = aws.ecr_client(region, aws.endpoint_url(self.settings.aws_endpoint_url))
            data = client.get_authorization_token(registryIds=[account])["authorizationData"]
            return str(data[0]["authorizationToken"])

        return await asyncio.to_thread(call)

    async def _adopt(self, namespace: str) -> None:
        """After a restart: build Jobs that still run are followed, not started again."""
        if namespace in self.adopted:
            return
        jobs = await self.kube.list(JOBS, namespace, label_selector="app.kubernetes.io/name=coursehub-build")
        self.adopted.add(namespace)
        by_uid = {c.uid: k for k, c in self.index.courses.items()}
        for job in jobs:
            meta = job["metadata"]
            key = by_uid.get((meta.get("labels") or {}).get(plan.COURSE_LABEL, ""))
            if key is None or key in self.running or job.get("status", {}).get("completionTime"):
                continue
            if any(
                c.get("type") == "Failed" and c.get("status") == "True"
                for c in job.get("status", {}).get("conditions") or []
            ):
                continue
            commit = (meta.get("annotations") or {}).get(plan.COMMIT_ANNOTATION, "")
            state = self.index.builds.get(key)
            if state is None:
                continue
            self.running[key] = meta["name"]
            started = job.get("status", {}).get("startTime") or meta.get("creationTimestamp")
            self._set(
                key,
                replace(
                    state,
                    current=BuildRecordData(
                        commit=commit, result="Running", job=meta["name"], started=started
                    ),
                ),
            )

    async def _watch(self) -> None:
        for key, name in list(self.running.items()):
            try:
                await self._check(key, name)
            except Exception as e:  # retried at the next look
                log.warning("looking at build Job %s of %s/%s failed: %s", name, *key, e)

    async def _check(self, key: Key, name: str) -> None:
        state = self.index.builds.get(key)
        ns = key[0]
        job = await self.kube.get_or_none(JOBS, name, ns)
        if state is None:
            self.running.pop(key, None)
            return
        cur = state.current or BuildRecordData(commit="", result="Running", job=name)
        if job is None:
            self.running.pop(key, None)
            self._finish(
                key, replace(cur, result="Failed", reason="JobLost", message=f"build Job {name} was deleted")
            )
            return
        status = job.get("status") or {}
        conds = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        if "Complete" not in conds and "Failed" not in conds:
            await self._check_refused(key, name, job, cur)
            return
        self.running.pop(key, None)
        pods = await self.kube.list(PODS, ns, label_selector=f"job-name={name}")
        pod = pods[-1] if pods else None
        term: dict = {}
        if pod is not None:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated") or term
        started = cur.started or status.get("startTime")
        duration = _seconds_between(
            status.get("startTime"), status.get("completionTime") or term.get("finishedAt")
        )
        result = plan.parse_result(term.get("message"))
        if "Complete" in conds and result.get("digest"):
            rec = replace(
                cur, result="Succeeded", digest=result["digest"], started=started, duration_seconds=duration
            )
            self._finish(key, rec)
            raw = self.index.raw_courses.get(key)
            if raw is not None:
                await self.kube.event(
                    raw, reason="Built", message=f"built {cur.commit[:12]} as {cur.tag} ({result['digest']})"
                )
            self.on_built(key)
            return
        why = conds.get("Failed", {}).get("reason") or ""
        log_text = ""
        if pod is not None:
            try:
                log_text = await self.kube.get_text(
                    PODS.path(ns, pod["metadata"]["name"], "log"),
                    params={"container": "build", "tailLines": str(LOG_TAIL_LINES)},
                )
            except KubeError as e:
                log_text = f"(the build log could not be read: {e.status})"
        secrets = await self._secret_values(key)
        reason = "BuildTimedOut" if why == "DeadlineExceeded" else "BuildFailed"
        rec = replace(
            cur,
            result="Failed",
            reason=reason,
            started=started,
            duration_seconds=duration,
            message=plan.failure_message(
                log_text, secrets, why if why and why != "BackoffLimitExceeded" else ""
            ),
        )
        self._finish(key, rec)

    async def _check_refused(self, key: Key, name: str, job: dict, cur: BuildRecordData) -> None:
        """A Job whose pod the API server refuses (Pod Security, quota...) fails now, naming the
        cause, instead of at its deadline. The Job goes (it would keep retrying); the last good
        digest stays."""
        if any((job.get("status") or {}).get(k) for k in ("active", "succeeded", "failed")):
            return  # a pod exists: the usual path reads how it ends
        events = await self.kube.request(
            "GET",
            EVENTS.path(key[0]),
            params={"fieldSelector": f"involvedObject.kind=Job,involvedObject.name={name}"},
            kind="Event",
        )
        refused = plan.pod_refused(job, events.get("items") or [], key[0])
        if refused is None:
            return
        self.running.pop(key, None)
        await self.kube.delete(JOBS, name, key[0])
        reason, message = refused
        # The status writer posts the Warning Event as Built turns False (BuildPodRefused).
        self._finish(key, replace(cur, result="Failed", reason=reason, message=message))

    async def _secret_values(self, key: Key) -> list[str]:
        """Every value of the course's Secrets, only to mask them in log lines."""
        course = self.index.courses.get(key)
        if course is None or course.spec.build is None:
            return []
        names = [r.name for r in (course.spec.build.git.secret_ref, course.spec.build.push_secret_ref) if r]
        values: list[str] = []
        for n in names:
            try:
                values += list((await self._secret_data(course.namespace, n)).values())
            except GitProblem:
                continue
        return values

    def _finish(self, key: Key, rec: BuildRecordData) -> None:
        state = self.index.builds.get(key)
        if state is None:
            return
        log.info("build of %s/%s: %s %s (%s)", *key, rec.commit[:12], rec.result, rec.reason or "-")
        state = state.finished(rec)
        if state.current is not None and state.current.result == "Running":
            state = replace(state, current=None)
        queued = self.queued.get(key)
        if queued is not None:
            state = replace(state, current=BuildRecordData(commit=queued.commit, result="Queued"))
        self._set(key, state)
        self.wakeup.set()


def _seconds_between(a: str | None, b: str | None) -> int | None:
    if not a or not b:
        return None
    try:
        t0 = datetime.fromisoformat(a.replace("Z", "+00:00"))
        t1 = datetime.fromisoformat(b.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0, int((t1.astimezone(UTC) - t0.astimezone(UTC)).total_seconds()))
