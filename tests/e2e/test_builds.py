"""Course images built from course repositories (issue 14), on real nodes: a real operator process
polls a real git server (Debian's git http-backend over HTTPS with a CA of its own), runs buildah
build Jobs on a real node (the coursehub/buildah image built here), which push to the local
registry; the resolver publishes what they pushed.

One real-node cluster for the module (needs root; run under the e2e lock). The tests share it
and run in order: each leaves the course in a state the next one starts from.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import yaml

from coursehub_dev import samples
from coursehub_dev.waiting import WaitTimeout, wait_until
from fixtures.builds import BuildStack, build_stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.real_nodes,
    pytest.mark.skipif(os.geteuid() != 0, reason="real nodes need root (containerd, kubelet, bridges)"),
]

NS = "courses"
WEBHOOK_SECRET = uuid.uuid4().hex
DOCKERFILE = "ARG BASE_IMAGE\nFROM $BASE_IMAGE\nCOPY version.txt /version.txt\nRUN test -s /version.txt\n"
BUILD_TIMEOUT = 300


@dataclass
class Env(BuildStack):
    def kubectl(self, *args: str, input: str | None = None, check: bool = True):
        return self.cluster.kubectl(*args, input=input, check=check)

    def apply(self, *objs: dict) -> None:
        self.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump_all(objs))

    def course(self, name: str) -> dict:
        return json.loads(self.kubectl("get", "courseimage", name, "-n", NS, "-o", "json").stdout)

    def course_manifest(self, name: str, repo: str, **build) -> dict:
        spec_build = {
            "git": {"url": self.git.url(repo)},
            "buildArgs": [{"name": "BASE_IMAGE", "value": self.base}],
            "pollSeconds": 10,
            **build,
        }
        return samples.course_manifest(
            name, name, f"{self.registry}/courses/{name}:{name}", build=spec_build, prePull=False
        )

    def webhook(self, body: bytes, signature: str) -> requests.Response:
        return requests.post(
            f"http://127.0.0.1:{self.webhook_port}/hooks/git",
            data=body,
            headers={
                "X-GitHub-Event": "push",
                "X-Hub-Signature-256": signature,
                "Content-Type": "application/json",
            },
            timeout=10,
        )


def cond(obj: dict, type_: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def build_status(obj: dict) -> dict:
    return (obj.get("status") or {}).get("build") or {}


def with_digest(env: Env, name: str, digest: str) -> dict | None:
    obj = env.course(name)
    return obj if (obj.get("status") or {}).get("digest") == digest else None


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    with build_stack(tmp_path_factory.mktemp("builds"), NS, WEBHOOK_SECRET) as stack:
        yield Env(**vars(stack))


def wait_built(env: Env, name: str, commit: str, samples_out: list | None = None) -> dict:
    def done():
        obj = env.course(name)
        if samples_out is not None:
            samples_out.append(obj)
        b = build_status(obj)
        return obj if b.get("commit") == commit and cond(obj, "Built").get("status") == "True" else None

    def failed() -> str | None:  # a failed build stops the wait at once, with its message
        last = build_status(env.course(name)).get("last") or {}
        if last.get("commit") == commit and last.get("result") == "Failed":
            return f"the build of {commit[:12]} failed: {last.get('message')}"
        return None

    try:
        return wait_until(
            done, timeout=BUILD_TIMEOUT, interval=1, what=f"{name} built at {commit[:12]}", abort=failed
        )
    except WaitTimeout as e:  # say where the build stood, so a one-off failure can be read afterwards
        raise AssertionError(f"{e}\n{build_diagnostics(env, name)}") from None


def build_diagnostics(env: Env, name: str) -> str:
    status = env.course(name).get("status") or {}
    workloads = env.kubectl("get", "jobs,pods", "-n", NS, "-o", "wide", check=False)
    events = env.kubectl("get", "events", "-n", NS, "--sort-by=.lastTimestamp", check=False)
    return "\n".join(
        [
            f"status.build: {json.dumps(status.get('build'))}",
            f"conditions: {json.dumps(status.get('conditions'))}",
            workloads.stdout + workloads.stderr,
            "\n".join(events.stdout.splitlines()[-30:]),
            "operator log (tail):\n" + "\n".join(env.operator.log().splitlines()[-40:]),
        ]
    )


def test_declare_build_publish_then_a_new_commit_replaces_the_digest(env):
    first = env.git.create("course1", {"Dockerfile": DOCKERFILE, "version.txt": "1\n"})
    env.apply(env.course_manifest("course1", "course1"))
    obj = wait_built(env, "course1", first)
    b = build_status(obj)
    d1 = b["digest"]
    assert b["last"]["tag"] == f"course1-{first[:12]}"
    obj = wait_until(lambda: with_digest(env, "course1", d1), timeout=60, what="the built digest resolved")
    assert obj["status"]["resolvedImage"] == f"{env.registry}/courses/course1@{d1}"
    wait_until(
        lambda: cond(env.course("course1"), "Published").get("status") == "True",
        timeout=120,
        what="Published",
    )
    # The build tag is in the registry, and it is the same image as the followed tag.
    r = requests.head(
        f"http://{env.registry}/v2/courses/course1/manifests/course1-{first[:12]}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert r.headers.get("Docker-Content-Digest") == d1

    # A new commit: the old digest is served until the new one is built and resolved.
    second = env.git.commit("course1", {"version.txt": "2\n"})
    seen: list[dict] = []
    obj = wait_built(env, "course1", second, seen)
    d2 = build_status(obj)["digest"]
    assert d2 != d1
    wait_until(
        lambda: (env.course("course1").get("status") or {}).get("digest") == d2, timeout=60, what="new digest"
    )
    # Until the new image was pushed learners got the old one, and never nothing: d1, then d2.
    # (The resolver may see the pushed tag before the operator reads the finished Job.)
    served = [o["status"].get("digest") for o in seen]
    assert set(served) <= {d1, d2} and served[0] == d1
    assert served == sorted(served, key=lambda d: d == d2)
    assert all(cond(o, "Ready").get("status") != "False" for o in seen)


def test_a_broken_dockerfile_fails_naming_the_step_and_keeps_the_old_digest(env):
    good = build_status(env.course("course1"))["digest"]
    broken = env.git.commit("course1", {"Dockerfile": DOCKERFILE + "RUN echo broken-step && exit 3\n"})

    def failed():
        o = env.course("course1")
        last = build_status(o).get("last") or {}
        return o if last.get("commit") == broken and last.get("result") == "Failed" else None

    obj = wait_until(failed, timeout=BUILD_TIMEOUT, interval=1, what="the broken build failed")
    built = cond(obj, "Built")
    assert (built["status"], built["reason"]) == ("False", "BuildFailed")
    assert "RUN echo broken-step && exit 3" in built["message"]
    assert obj["status"]["digest"] == good  # learners keep the last good image
    assert build_status(obj)["digest"] == good
    assert cond(obj, "Ready")["status"] == "True"
    events = env.kubectl("get", "events", "-n", NS, "-o", "json").stdout
    assert "BuildFailed" in events


def test_two_quick_commits_make_one_build_of_the_newest_and_webhooks_are_verified(env):
    env.git.create("course2", {"Dockerfile": DOCKERFILE, "version.txt": "a\n"})
    env.apply(env.course_manifest("course2", "course2", pollSeconds=3600))  # only the first poll and webhooks
    wait_built(env, "course2", env.git.head("course2"))
    a = env.git.commit("course2", {"version.txt": "b\n"})
    b = env.git.commit("course2", {"version.txt": "c\n"})
    body = json.dumps(
        {"ref": "refs/heads/main", "after": b, "repository": {"clone_url": env.git.url("course2")}}
    ).encode()
    # A bad signature is refused and changes nothing.
    bad = env.webhook(body, "sha256=" + "0" * 64)
    assert bad.status_code == 403 and "X-Hub-Signature-256" in bad.text  # our server answered
    good = env.webhook(body, sign(body))
    assert good.status_code == 202 and good.json() == {"courses": 1}
    obj = wait_built(env, "course2", b)
    history = build_status(obj)["history"]
    assert [h["commit"] for h in history].count(b) == 1
    assert a not in [h["commit"] for h in history]
    assert "refused" in env.operator.log() and body.decode() not in env.operator.log()


def test_a_private_repository_with_a_token_secret(env):
    token = "tok-" + uuid.uuid4().hex
    env.git.create("course3", {"Dockerfile": DOCKERFILE, "version.txt": "p\n"})
    env.git.token_for("course3", token)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "course3-git"},
        "stringData": {"token": token},
    }
    env.apply(
        secret,
        env.course_manifest(
            "course3", "course3", git={"url": env.git.url("course3"), "secretRef": {"name": "course3-git"}}
        ),
    )
    obj = wait_built(env, "course3", env.git.head("course3"))
    # The repository is private indeed: without the token git is refused.
    anonymous = subprocess.run(
        ["git", "ls-remote", env.git.url("course3")],
        env={**os.environ, "GIT_SSL_CAINFO": str(env.git.ca_file), "GIT_TERMINAL_PROMPT": "0"},
        capture_output=True,
        text=True,
    )
    assert anonymous.returncode != 0
    # The token is referenced, never copied: not in status, Events or the Job.
    assert token not in json.dumps(obj)
    assert token not in env.kubectl("get", "events", "-n", NS, "-o", "json").stdout
    jobs = env.kubectl("get", "jobs", "-n", NS, "-o", "json").stdout
    assert token not in jobs and base64.b64encode(token.encode()).decode() not in jobs
    assert "course3-git" in jobs


def test_a_repository_with_its_own_webhook_secret_takes_pushes_signed_with_it_only(env):
    """spec.build.git.webhookSecretRef: a push signed with the course's own secret builds the new
    commit (pollSeconds 3600: no poll would in this test's time); the operator-wide secret no
    longer suffices for that repository. While the Secret is missing, polling still builds,
    pushes are refused and Built (with a Warning Event) names the field and the fix."""
    own = "own-" + uuid.uuid4().hex
    first = env.git.create("course-hook", {"Dockerfile": DOCKERFILE, "version.txt": "h1\n"})
    git = {"url": env.git.url("course-hook"), "webhookSecretRef": {"name": "course-hook-webhook"}}
    env.apply(env.course_manifest("course-hook", "course-hook", git=git, pollSeconds=3600))

    def push(commit: str, secret: str) -> requests.Response:
        body = json.dumps(
            {
                "ref": "refs/heads/main",
                "after": commit,
                "repository": {"clone_url": env.git.url("course-hook")},
            }
        ).encode()
        return env.webhook(body, "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest())

    def refused_for_the_missing_secret():
        o = env.course("course-hook")
        built = cond(o, "Built")
        done = build_status(o).get("commit") == first and built.get("reason") == "WebhookSecretNotFound"
        return o if done else None

    obj = wait_until(
        refused_for_the_missing_secret,
        timeout=BUILD_TIMEOUT,
        interval=1,
        what="built by polling, Secret missing",
    )
    built = cond(obj, "Built")
    assert built["status"] == "False"
    assert (
        "spec.build.git.webhookSecretRef: Secret course-hook-webhook not found in courses" in built["message"]
    )
    assert "Create it with key 'webhook-secret'" in built["message"]

    def warned() -> bool:  # posted as the status is written
        events = json.loads(env.kubectl("get", "events", "-n", NS, "-o", "json").stdout)["items"]
        return any(
            e["reason"] == "WebhookSecretNotFound"
            and e["involvedObject"]["name"] == "course-hook"
            and e["type"] == "Warning"
            for e in events
        )

    wait_until(warned, timeout=30, interval=1, what="a Warning Event WebhookSecretNotFound")
    for secret in (WEBHOOK_SECRET, own):  # fail closed: not even the operator-wide secret
        r = push(first, secret)
        assert r.status_code == 403 and "no webhook secret for this repository" in r.text  # our server

    env.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "course-hook-webhook"},
            "stringData": {"webhook-secret": own + "\n"},
        }
    )
    second = env.git.commit("course-hook", {"version.txt": "h2\n"})

    # Signed with its own secret: accepted once the operator reads the new Secret (it keeps a
    # read for 10 s), and the new commit is built.
    def accepted():
        r = push(second, own)
        return r if r.status_code == 202 else None

    r = wait_until(
        accepted, timeout=60, interval=1, what="a push signed with the course's own secret accepted"
    )
    assert r.json() == {"courses": 1} and r.headers.get("X-Coursehub-Operator")
    # The operator-wide secret does not sign for this repository (its own is readable now).
    forged = push(second, WEBHOOK_SECRET)
    assert forged.status_code == 403 and "X-Hub-Signature-256 does not match" in forged.text
    obj = wait_built(env, "course-hook", second)
    assert cond(obj, "Built")["reason"] == "Built"
    assert [h["commit"] for h in build_status(obj)["history"]][:2] == [second, first]
    # Read, never copied: not in status, Events or the operator's log.
    assert own not in json.dumps(obj)
    assert own not in env.kubectl("get", "events", "-n", NS, "-o", "json").stdout
    assert own not in env.operator.log()


def test_kubectl_shows_the_build_column(env):
    out = env.kubectl("get", "courseimages", "-n", NS).stdout
    assert "BUILD" in out.splitlines()[0]
    assert "Built" in out and "BuildFailed" in out


def test_a_build_pod_refused_by_pod_security_fails_at_once_and_keeps_the_digest(env):
    """Last: it leaves course1's Build column at BuildPodRefused."""
    good = build_status(env.course("course1"))["digest"]
    served = env.course("course1")["status"]["digest"]
    env.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=baseline", "--overwrite")
    try:
        env.kubectl(
            "annotate", "courseimage", "course1", "-n", NS, f"coursehub.dev/rebuild={uuid.uuid4().hex}"
        )

        def refused():
            o = env.course("course1")
            last = build_status(o).get("last") or {}
            return o if last.get("reason") == "BuildPodRefused" else None

        # Well before the Job's deadline (1800 s): the Job's FailedCreate Event is read.
        obj = wait_until(refused, timeout=120, interval=1, what="the refused build reported")
    finally:
        env.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce-")
    built = cond(obj, "Built")
    assert (built["status"], built["reason"]) == ("False", "BuildPodRefused")
    assert 'violates PodSecurity "baseline' in built["message"]
    assert "pod-security.kubernetes.io/enforce=privileged" in built["message"]
    assert obj["status"]["digest"] == served and build_status(obj)["digest"] == good
    assert cond(obj, "Ready")["status"] == "True"
    job = build_status(obj)["last"]["job"]
    assert env.kubectl("get", "job", job, "-n", NS, check=False).returncode != 0  # it would keep retrying
    events = json.loads(env.kubectl("get", "events", "-n", NS, "-o", "json").stdout)["items"]
    assert any(
        e["reason"] == "BuildPodRefused"
        and e["involvedObject"]["name"] == "course1"
        and e["type"] == "Warning"
        for e in events
    )


def test_a_private_repository_over_ssh_with_a_deploy_key_and_known_hosts(env):
    """ssh:// (docs/builds.md, Credentials): the operator polls with the Secret's key and known_hosts
    (StrictHostKeyChecking=yes), the build pod clones with them from Debian's sshd on the host
    bridge; a Secret whose known_hosts names another host key fails host key verification, naming
    the field, and builds nothing. The private key is referenced, never copied."""
    env.git.create("course-ssh", {"Dockerfile": DOCKERFILE, "version.txt": "ssh\n"})
    env.git.token_for("course-ssh", uuid.uuid4().hex)  # private over HTTPS too: only the deploy key reads it
    key = env.ssh.deploy_key("course-ssh")

    def secret(name: str, known_hosts: str) -> dict:
        data = {"ssh-privatekey": key, "known_hosts": known_hosts}
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}

    def ssh_course(name: str, secret_name: str, **build) -> dict:
        git = {"url": env.ssh.url("course-ssh"), "secretRef": {"name": secret_name}}
        return env.course_manifest(name, "course-ssh", git=git, **build)

    # Polled once (then only by webhook): its fetches are counted below.
    env.apply(
        secret("course-ssh-git", env.ssh.known_hosts()),
        ssh_course("course-ssh", "course-ssh-git", pollSeconds=3600),
    )
    head = env.git.head("course-ssh")
    obj = wait_built(env, "course-ssh", head)
    digest = build_status(obj)["digest"]
    obj = wait_until(
        lambda: with_digest(env, "course-ssh", digest), timeout=60, what="the built digest resolved"
    )
    assert obj["status"]["resolvedImage"] == f"{env.registry}/courses/course-ssh@{digest}"
    r = requests.head(
        f"http://{env.registry}/v2/courses/course-ssh/manifests/course-ssh-{head[:12]}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert r.headers.get("Docker-Content-Digest") == digest
    # Over ssh indeed: the deploy key read the repository (the operator's poll, the pod's clone);
    # the HTTPS server was never asked for it.
    assert env.ssh.fetches("course-ssh") >= 2
    assert env.git.requests["course-ssh"] == 0
    job = build_status(obj)["last"]["job"]

    # A known_hosts naming another host key for the server's address (a server that is not the one
    # trusted, or a changed key): refused at the poll, before any Job.
    fetched = env.ssh.fetches("course-ssh")
    env.apply(secret("course-ssh-other-host", env.ssh.other_known_hosts()))
    env.apply(ssh_course("course-ssh-mitm", "course-ssh-other-host"))

    def refused():
        o = env.course("course-ssh-mitm")
        return o if cond(o, "Built").get("reason") == "HostKeyVerificationFailed" else None

    bad = wait_until(refused, timeout=120, interval=1, what="host key verification failed")
    built = cond(bad, "Built")
    assert built["status"] == "False"
    assert "key 'known_hosts' of Secret course-ssh-other-host (spec.build.git.secretRef)" in built["message"]
    assert f"[{env.ssh.address}]:{env.ssh.port}" in built["message"]
    assert cond(bad, "Ready")["status"] == "False"
    uid = bad["metadata"]["uid"]
    own_jobs = env.kubectl("get", "jobs", "-n", NS, "-l", f"coursehub.dev/build-for={uid}", "-o", "name")
    assert own_jobs.stdout.strip() == ""  # nothing built
    assert not build_status(bad).get("digest") and not (bad.get("status") or {}).get("digest")
    assert env.ssh.fetches("course-ssh") == fetched  # the session ended at the host key
    events = json.loads(env.kubectl("get", "events", "-n", NS, "-o", "json").stdout)["items"]
    assert any(
        e["reason"] == "HostKeyVerificationFailed"
        and e["involvedObject"]["name"] == "course-ssh-mitm"
        and e["type"] == "Warning"
        and "known_hosts" in e["message"]
        for e in events
    )

    # The build pod checks the host key too, on its own: the Secret's known_hosts now names another
    # key (after the operator's poll), and a rebuild's clone is refused; learners keep the digest.
    env.apply(secret("course-ssh-git", env.ssh.other_known_hosts()))
    again = f"coursehub.dev/rebuild={uuid.uuid4().hex}"
    env.kubectl("annotate", "courseimage", "course-ssh", "-n", NS, again)

    def clone_refused():
        o = env.course("course-ssh")
        last = build_status(o).get("last") or {}
        return o if last.get("job") != job and last.get("result") == "Failed" else None

    obj = wait_until(clone_refused, timeout=BUILD_TIMEOUT, interval=1, what="the pod's clone refused")
    last = build_status(obj)["last"]
    assert last["commit"] == head and "STEP clone" in last["message"]
    assert "Host key verification failed" in last["message"]
    assert obj["status"]["digest"] == digest and build_status(obj)["digest"] == digest
    assert env.ssh.fetches("course-ssh") == fetched  # it never got past the host key either
    refused_job = last["job"]

    # The private key is referenced, never copied: not in status, Events, the Jobs, their pods'
    # logs or the operator's log (whole, in base64, or any line of its private part).
    body = [ln for ln in key.splitlines() if ln and not ln.startswith("-----")]
    needles = [key.strip(), base64.b64encode(key.encode()).decode(), *body[2:]]
    assert needles[2:]
    seen = {
        "status": json.dumps([env.course("course-ssh"), env.course("course-ssh-mitm")]),
        "events": env.kubectl("get", "events", "-n", NS, "-o", "json").stdout,
        "job": env.kubectl("get", "job", job, refused_job, "-n", NS, "-o", "json").stdout,
        "pod log": env.kubectl("logs", f"job/{job}", "-n", NS, check=False).stdout,
        "refused pod log": env.kubectl("logs", f"job/{refused_job}", "-n", NS, check=False).stdout,
        "operator log": env.operator.log(),
    }
    for where, text in seen.items():
        assert not any(n in text for n in needles), f"the private key is in the {where}"
    assert "course-ssh-git" in seen["job"]
