"""A course built from its repository reaches learners (issue 14's first test, end to end).

On `real_cluster` (the operator in the cluster, installed by its chart, here with builds on:
build.image, its nodeSelector and the git server as a private host), a CourseImage names a
repository on a local git server (Debian's git http-backend on the host bridge). The course
repository's Dockerfile starts from the example course image (JupyterLab) and bakes in a marker
file naming its commit. Built -> Published -> a learner's launch link opens JupyterLab, and the
test asserts who answered: the marker read through the learner's own server (Jupyter's contents
API) and the learner pod's image digest, which must be the built one. A new commit: the old
digest is served until the new one is published, then a NEW learner gets the new image while
the first learner's pod keeps the old one.

The second commit reaches the operator by a push webhook through a real kube-proxy: the chart's
webhook Service (no selector with leader election; the leader writes its EndpointSlice) is
called on its ClusterIP from this machine, where kube-proxy (iptables mode) programs the OUTPUT
chains. The course polls once an hour and has a webhook secret of its own
(spec.build.git.webhookSecretRef): the push signed with the operator-wide secret is refused for
its repository, the one signed with its own is answered by the Lease holder (the response names
it, which no egress proxy could) and builds the commit.

Until this test, no in-cluster operator had ever built: the chart's operator image had no git,
so its `git ls-remote` polls failed (now GitNotFound, aborting the wait at once) and
status.build never appeared. On failure the course, the build Jobs' pods and logs and the
operator's log are printed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

import pytest
import requests
import yaml

from coursehub_dev.existing import target_kubeconfig
from coursehub_dev.realnodes import HOST_IP
from coursehub_dev.stack import OPERATOR_CHART, OPERATOR_NAMESPACE, OPERATOR_RELEASE
from coursehub_dev.waiting import wait_until
from fixtures.git_server import GitServer

pytestmark = [pytest.mark.e2e, pytest.mark.real_nodes]

SLUG = "built"
DOCKERFILE = (
    "ARG BASE_IMAGE\nFROM $BASE_IMAGE\n"
    "COPY --chown=1000:1000 marker.txt /home/jovyan/marker.txt\n"
    "RUN test -s /home/jovyan/marker.txt\n"
)
BUILD_TIMEOUT = 600
# Built=False for these is the operator's or the course's configuration: waiting cannot help.
CONFIG_PROBLEMS = {
    "GitNotFound",
    "SourceForbidden",
    "SourceUnauthorized",
    "RefNotFound",
    "BuildsDisabled",
    "WebhookSecretNotFound",
    "WebhookSecretInvalid",
    "WebhookSecretUnreadable",
}
# The operator-wide push webhook secret (a Secret of the operator's namespace, as the chart takes
# it) and the course's own one (a Secret of its namespace, spec.build.git.webhookSecretRef).
OPERATOR_WEBHOOK_SECRET = "operator-" + uuid.uuid4().hex
COURSE_WEBHOOK_SECRET = "course-" + uuid.uuid4().hex
WEBHOOK_SECRET_NAME = "coursehub-webhook"


@pytest.fixture(scope="module")
def built_hub(real_cluster, tmp_path_factory):
    """Builds on in the operator, a git server, a course with spec.build and a hub."""
    if target_kubeconfig():
        pytest.skip("the git server listens on this machine's real-node bridge, which that cluster lacks")
    root = tmp_path_factory.mktemp("hub-builds")
    git = GitServer(root / "git", address=HOST_IP)
    values = real_cluster.operator_values()
    values["build"] = {
        "image": real_cluster.builder.buildah(),
        "nodeSelector": ["kubernetes.io/hostname=real-node-0"],
        "gitPrivateHosts": [git.host],
    }
    # Push webhooks on: the Service <fullname>-webhook, routed to the leader by its EndpointSlice.
    real_cluster.cluster.kubectl(
        "create", "secret", "generic", WEBHOOK_SECRET_NAME, "-n", OPERATOR_NAMESPACE,
        f"--from-literal=secret={OPERATOR_WEBHOOK_SECRET}",
    )  # fmt: skip
    values["webhook"] = {"enabled": True, "secretName": WEBHOOK_SECRET_NAME}
    path = real_cluster.cluster.state_dir / "operator-values-builds.json"
    path.write_text(json.dumps(values))
    upgrade = ("upgrade", OPERATOR_RELEASE, str(OPERATOR_CHART), "--namespace", OPERATOR_NAMESPACE)
    real_cluster.helm(*upgrade, "-f", str(path), "--wait", "--timeout", "5m")
    wait_until(
        lambda: builds_on_leads(real_cluster), timeout=180, interval=1, what="an operator with builds leading"
    )
    ns = real_cluster.namespace(f"hub-builds-{uuid.uuid4().hex[:6]}")
    try:
        yield real_cluster, git, ns
    finally:
        real_cluster.cluster.kubectl("delete", "jupyterhubdeployment", "hub", "-n", ns, check=False)
        real_cluster.cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        real_cluster.install_operator()  # builds and webhooks off again, as the other tests expect
        real_cluster.cluster.kubectl(
            "delete", "secret", WEBHOOK_SECRET_NAME, "-n", OPERATOR_NAMESPACE, check=False
        )
        git.stop()


def builds_on_leads(rc) -> bool:
    """The rollout is over: every operator pod has builds on and one of them holds the Lease.
    (helm --wait returns once one new pod is ready (maxUnavailable 1); until the old leader is
    gone it serves, with builds off, and says BuildsDisabled.)"""
    pods = json.loads(
        rc.cluster.kubectl(
            "get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "json",
            "-l", f"app.kubernetes.io/name=coursehub-operator,app.kubernetes.io/instance={OPERATOR_RELEASE}",
        ).stdout
    )["items"]  # fmt: skip

    def builds_on(pod: dict) -> bool:
        env = [e for c in pod["spec"]["containers"] for e in c.get("env") or []]
        return any(e["name"] == "COURSEHUB_BUILD_IMAGE" and e.get("value") for e in env)

    if not pods or any(p["metadata"].get("deletionTimestamp") or not builds_on(p) for p in pods):
        return False
    lease = rc.cluster.kubectl(
        "get", "lease", f"{OPERATOR_RELEASE}-coursehub-operator", "-n", OPERATOR_NAMESPACE, "-o", "json",
        check=False,
    )  # fmt: skip
    holder = json.loads(lease.stdout)["spec"].get("holderIdentity") if lease.returncode == 0 else None
    return holder in {p["metadata"]["name"] for p in pods}


def lease_holder(rc) -> str | None:
    lease = rc.cluster.kubectl(
        "get", "lease", f"{OPERATOR_RELEASE}-coursehub-operator", "-n", OPERATOR_NAMESPACE, "-o", "json",
        check=False,
    )  # fmt: skip
    return json.loads(lease.stdout)["spec"].get("holderIdentity") if lease.returncode == 0 else None


def webhook_service_ip(rc) -> str:
    """The ClusterIP of the chart's webhook Service (found by its component label)."""
    items = json.loads(
        rc.cluster.kubectl(
            "get", "services", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/component=webhook",
            "-o", "json",
        ).stdout
    )["items"]  # fmt: skip
    assert len(items) == 1, [i["metadata"]["name"] for i in items]
    assert not items[0]["spec"].get("selector")  # leader election: the leader's slice routes it
    return items[0]["spec"]["clusterIP"]


def push_through_service(ip: str, git: GitServer, commit: str, secret: str) -> requests.Response | None:
    """A GitHub push for the course's repository, to the webhook Service's ClusterIP port 80, from
    this machine: kube-proxy's DNAT in the OUTPUT chain sends it to the leader's pod. A new
    connection each time, never through a proxy; None when nothing answers (no endpoint yet)."""
    body = json.dumps(
        {"ref": "refs/heads/main", "after": commit, "repository": {"clone_url": git.url(SLUG)}}
    ).encode()
    headers = {
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "Content-Type": "application/json",
    }
    http = requests.Session()
    http.trust_env = False
    try:
        return http.post(f"http://{ip}/hooks/git", data=body, headers=headers, timeout=5)
    except requests.RequestException:
        return None


def course_manifest(real_cluster, git: GitServer, base: str) -> dict:
    return {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": "CourseImage",
        "metadata": {"name": SLUG},
        "spec": {
            "course": SLUG,
            "displayName": "Built from git",
            "image": f"{real_cluster.registry}/courses/{SLUG}:{SLUG}",
            "prePull": False,
            "build": {
                "git": {"url": git.url(SLUG), "webhookSecretRef": {"name": f"{SLUG}-webhook"}},
                "buildArgs": [{"name": "BASE_IMAGE", "value": base}],
                # Polled when declared, then an hour later: the second commit comes by webhook.
                "pollSeconds": 3600,
            },
        },
    }


def test_a_built_course_reaches_learners_and_a_new_commit_reaches_new_learners(built_hub):
    rc, git, ns = built_hub
    try:
        scenario(rc, git, ns)
    except BaseException:
        print(diagnostics(rc, ns))
        raise


def diagnostics(rc, ns: str) -> str:
    """What a failed run needs: the course, the build Jobs' pods and logs, the operator's log."""
    kubectl = rc.cluster.kubectl
    parts = [
        kubectl("get", "courseimage", SLUG, "-n", ns, "-o", "yaml", check=False).stdout,
        kubectl("get", "jobs,pods", "-n", ns, "-o", "wide", check=False).stdout,
        kubectl(
            "get", "services,endpointslices,leases", "-n", OPERATOR_NAMESPACE, "-o", "wide", check=False
        ).stdout,
    ]
    pods = kubectl(
        "get", "pods", "-n", ns, "-l", "app.kubernetes.io/name=coursehub-build", "-o", "name", check=False
    ).stdout.split()
    for pod in pods[-2:]:
        res = kubectl("logs", "-n", ns, pod, "--all-containers", "--tail=60", check=False)
        parts.append(f"----- {pod} -----\n{res.stdout}{res.stderr}")
    events = kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False).stdout
    parts.append("----- events -----\n" + "\n".join(events.splitlines()[-40:]))
    parts.append("----- operator log -----\n" + rc.operator_log(120))
    return "\n".join(parts)


def scenario(rc, git: GitServer, ns: str) -> None:
    kubectl = rc.cluster.kubectl

    def course() -> dict:
        return json.loads(kubectl("get", "courseimage", SLUG, "-n", ns, "-o", "json").stdout)

    def built(commit: str) -> str | None:
        b = (course().get("status") or {}).get("build") or {}
        return b.get("digest") if b.get("commit") == commit else None

    def failed() -> str | None:  # a failed build or a configuration problem stops a wait at once
        status = course().get("status") or {}
        last = (status.get("build") or {}).get("last") or {}
        if last.get("result") == "Failed":
            return f"build {last.get('commit', '')[:12]} failed: {last.get('message')}"
        built_cond = next((c for c in status.get("conditions") or [] if c["type"] == "Built"), {})
        if built_cond.get("reason") in CONFIG_PROBLEMS:
            return f"Built is {built_cond['reason']}: {built_cond.get('message')}"
        return None

    def offered() -> str:
        cm = kubectl("get", "configmap", "coursehub-allowlist", "-n", ns, "-o", "json", check=False)
        if cm.returncode != 0:
            return ""
        doc = json.loads(json.loads(cm.stdout)["data"]["allowlist.json"])
        return ((doc.get("courses") or {}).get(SLUG) or {}).get("image") or ""

    def learner(expect_marker: str) -> tuple[str, dict]:
        s = rc.browser()
        user = rc.launch(ns, SLUG, s)
        wait_until(lambda: rc.lab_version(ns, user, s), timeout=240, what=f"JupyterLab of {user}")
        base = rc.hub_url(ns)
        # Who answered: the learner's own server, reading the file the build baked in.
        r = s.get(f"{base}/user/{user}/api/contents/marker.txt", params={"content": "1"}, timeout=10)
        assert r.json()["content"].strip() == expect_marker
        pod = rc.learner_pod(ns, user)
        assert pod is not None
        return user, pod

    def digest_of(pod: dict) -> str:
        image_id = next(c["imageID"] for c in pod["status"]["containerStatuses"] if c["name"] == "notebook")
        return image_id.rpartition("@")[2]

    marker1 = "one " + uuid.uuid4().hex
    first = git.create(SLUG, {"Dockerfile": DOCKERFILE, "marker.txt": marker1 + "\n"})
    own_secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{SLUG}-webhook"},
        "stringData": {"webhook-secret": COURSE_WEBHOOK_SECRET},
    }
    kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(own_secret))
    kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=yaml.safe_dump(course_manifest(rc, git, rc.builder.course("clustering"))),
    )
    rc.create_hub(ns, pre_pull={"enabled": False})
    d1 = wait_until(
        lambda: built(first), timeout=BUILD_TIMEOUT, interval=2, what="the first build", abort=failed
    )
    rc.wait_hub_ready(ns)
    wait_until(lambda: offered().endswith("@" + d1), timeout=180, what="the built digest offered")
    obj = course()
    assert obj["status"]["resolvedImage"] == f"{rc.registry}/courses/{SLUG}@{d1}"
    assert next(c for c in obj["status"]["conditions"] if c["type"] == "Published")["status"] == "True"

    user1, pod1 = learner(marker1)
    assert pod1["spec"]["containers"][0]["image"].endswith("@" + d1)
    assert digest_of(pod1) == d1

    # A new commit: until it is published, the old digest is what the hub offers.
    marker2 = "two " + uuid.uuid4().hex
    second = git.commit(SLUG, {"marker.txt": marker2 + "\n"})
    # The push, through kube-proxy to the leader. Who answered: the response names the Lease
    # holder (X-Coursehub-Operator) and the courses it woke; an egress proxy answers neither.
    ip = webhook_service_ip(rc)

    def answered() -> requests.Response | None:
        r = push_through_service(ip, git, second, COURSE_WEBHOOK_SECRET)
        return r if r is not None and r.status_code == 202 else None

    r = wait_until(answered, timeout=120, interval=1, what=f"the push answered through Service IP {ip}")
    assert r.json() == {"courses": 1}
    leader = lease_holder(rc)
    assert leader and r.headers.get("X-Coursehub-Operator") == leader
    # The operator-wide secret no longer signs for a repository that has its own.
    forged = push_through_service(ip, git, second, OPERATOR_WEBHOOK_SECRET)
    assert forged is not None and forged.status_code == 403
    assert "X-Hub-Signature-256 does not match the body" in forged.text
    seen: list[str] = []

    def published_new() -> str | None:
        image = offered()
        seen.append(image)
        return image if not image.endswith("@" + d1) else None

    new_image = wait_until(
        published_new, timeout=BUILD_TIMEOUT, interval=1, what="the new digest offered", abort=failed
    )
    # The allowlist and the course's status are separate writes: the build's record may land
    # a moment after its digest is offered.
    d2 = wait_until(lambda: built(second), timeout=120, interval=1, what="the second build recorded")
    assert d2 != d1 and new_image.endswith("@" + d2)
    assert all(i.endswith("@" + d1) for i in seen[:-1])  # the old one, never nothing, until then

    user2, pod2 = learner(marker2)
    assert user2 != user1
    assert pod2["spec"]["containers"][0]["image"].endswith("@" + d2)
    assert digest_of(pod2) == d2
    # The first learner keeps the image they started with.
    still = rc.learner_pod(ns, user1)
    assert still is not None and digest_of(still) == d1
    # Measured, for docs/builds.md (shown with -rP): how long each build Job ran.
    history = course()["status"]["build"].get("history") or []
    print("builds:", [(h["commit"][:12], h["result"], h.get("durationSeconds")) for h in history])
