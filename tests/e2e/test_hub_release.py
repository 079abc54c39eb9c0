"""JupyterHubDeployment end to end: release, secrets, rotation, invalid values, two hubs, delete."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import uuid

import pytest
import yaml

from coursehub_dev.paths import Z2JH_CHART
from fixtures.cluster import get_yaml, wait_until

pytestmark = pytest.mark.e2e

from test_course_flow import condition  # noqa: E402  (shared manifests)


def hub(name="learn", **spec) -> dict:
    base = {
        "chart": {"path": str(Z2JH_CHART)},
        "domain": "nb.example.edu",
        "auth": {"mode": "tmp", "allowUngated": True},
        "database": {"type": "postgres", "urlSecretRef": {"name": "db", "key": "DATABASE_URL"}},
        "values": {"proxy": {"service": {"type": "ClusterIP"}}},
    }
    base.update(spec)
    return {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": "JupyterHubDeployment",
        "metadata": {"name": name},
        "spec": base,
    }


def secret(name: str, **data: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def apply(cluster, ns, *objs):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(objs))


def jhd(cluster, ns, name="learn") -> dict:
    return get_yaml(cluster, "jhd", name, "-n", ns)


def cond(cluster, ns, type_, name="learn") -> dict:
    return condition(jhd(cluster, ns, name), type_)


def helm_history(cluster, ns, release="learn") -> list[dict]:
    res = subprocess.run(
        [cluster.binaries["helm"], "history", release, "-n", ns, "-o", "json"],
        capture_output=True,
        text=True,
        env=cluster.env(),
    )
    return json.loads(res.stdout) if res.returncode == 0 else []


def hub_pod_annotation(cluster, ns) -> dict:
    dep = get_yaml(cluster, "deployment", "hub", "-n", ns)
    return dep["spec"]["template"]["metadata"].get("annotations") or {}


def ready_on_generation(cluster, ns, name="learn") -> bool:
    obj = jhd(cluster, ns, name)
    c = condition(obj, "Ready")
    return c.get("status") == "True" and c.get("observedGeneration") == obj["metadata"]["generation"]


def test_missing_secret_then_install_then_noop_then_upgrade_once(cluster, namespace, operator_factory):
    ns = namespace
    op = operator_factory([ns])
    apply(cluster, ns, hub())
    c = wait_until(
        lambda: (x := cond(cluster, ns, "DatabaseReady")).get("status") == "False" and x,
        what="missing database secret reported",
    )
    assert c["reason"] == "SecretNotFound" and "db" in c["message"]
    assert cond(cluster, ns, "ReleaseDeployed")["reason"] == "WaitingForSecrets"
    assert helm_history(cluster, ns) == []  # nothing installed while the secret is missing

    apply(cluster, ns, secret("db", OTHER="x"))
    c = wait_until(
        lambda: (x := cond(cluster, ns, "DatabaseReady")).get("reason") == "SecretKeyMissing" and x,
        what="missing key reported",
    )
    assert "DATABASE_URL" in c["message"] and "x" not in c["message"].split("DATABASE_URL")[-1]

    apply(cluster, ns, secret("db", DATABASE_URL="postgresql://u:pw-1@db/hub"))
    wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="hub Ready")
    status = jhd(cluster, ns)["status"]
    assert status["release"]["revision"] == 1 and status["url"] == "https://nb.example.edu/"
    assert len(helm_history(cluster, ns)) == 1
    # The URL never lands in values (ConfigMaps, helm's stored values).
    values = subprocess.run(
        [cluster.binaries["helm"], "get", "values", "learn", "-n", ns, "-o", "json"],
        capture_output=True,
        text=True,
        env=cluster.env(),
        check=True,
    ).stdout
    assert "pw-1" not in values
    assert "postgresql://u:" not in values

    # Nothing changes: no upgrade, also not across an operator restart.
    time.sleep(4)
    op.kill()
    op.start()
    time.sleep(8)
    assert len(helm_history(cluster, ns)) == 1

    # A spec change upgrades exactly once, and Ready follows the new generation.
    obj = hub(culling={"timeoutSeconds": 1200})
    apply(cluster, ns, obj)
    wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="Ready on the new generation")
    time.sleep(3)
    assert len(helm_history(cluster, ns)) == 2


# The operator may not watch Secrets and the periodic resync stays at its default (600 s):
# only the poll of the referenced Secrets can notice a rotation here.
SECRET_POLL = {"COURSEHUB_SECRET_POLL_SECONDS": "1"}
SECRETS_ANNOTATION = "coursehub.dev/secrets-version"
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def api_requests(op, methods, kind: str | None = None) -> float:
    labels = {"kind": kind} if kind else {}
    return sum(op.metric("coursehub_kube_requests_total", method=m, **labels) for m in methods)


def hub_rounds(op) -> float:
    try:
        return op.metric("coursehub_reconciles_total", kind="JupyterHubDeployment")
    except OSError:  # still starting
        return 0.0


def release_revision(cluster, ns) -> int | None:
    return (jhd(cluster, ns).get("status") or {}).get("release", {}).get("revision")


def after_many_rounds(op, rounds: int = 4) -> None:
    """Restart the operator with a round every 2 s and let `rounds` rounds run, so that
    "exactly once" holds against many rounds after the change (and across a restart)."""
    op.kill()
    op.extra_env = {**op.extra_env, "COURSEHUB_RESYNC_SECONDS": "2"}
    op.start()
    wait_until(lambda: hub_rounds(op) >= rounds, timeout=60, what=f"{rounds} hub rounds")


def generation(cluster, ns, deployment: str) -> int:
    return get_yaml(cluster, "deployment", deployment, "-n", ns)["metadata"]["generation"]


def content_hashes(*values: str) -> set[str]:
    """What a plain hash of a Secret value would look like, in the forms one might use."""
    import hashlib

    out = set()
    for v in values:
        for algo in (hashlib.sha256, hashlib.sha1, hashlib.md5):
            out.add(algo(v.encode()).hexdigest())
    return out


def test_secret_rotation_restarts_hub_once(cluster, namespace, operator_factory):
    ns = namespace
    # With the chart's rights: Secrets may be read by name only, never listed or watched.
    op = operator_factory([ns], env=SECRET_POLL, identity="chart")
    apply(cluster, ns, secret("db", DATABASE_URL="postgresql://u:old@db/hub"), hub())
    wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="hub Ready")
    before = hub_pod_annotation(cluster, ns)
    stamp = before[SECRETS_ANNOTATION]
    # A stamp of the Secret's uid and resourceVersion: nothing to guess the URL against offline.
    assert not any(h in stamp for h in content_hashes("postgresql://u:old@db/hub", "old"))
    gen = generation(cluster, ns, "hub")
    apply(cluster, ns, secret("db", DATABASE_URL="postgresql://u:rotated@db/hub"))
    wait_until(
        lambda: hub_pod_annotation(cluster, ns) != before, timeout=60, what="hub restarted for rotation"
    )
    wait_until(lambda: len(helm_history(cluster, ns)) == 2, timeout=60, what="one upgrade")
    wait_until(lambda: release_revision(cluster, ns) == 2, timeout=60, what="revision 2 in status")
    # At rest the poll only reads: one GET per referenced Secret per interval, no writes.
    writes, gets = api_requests(op, WRITES), api_requests(op, ["GET"], "Secret")
    wait_until(lambda: api_requests(op, ["GET"], "Secret") >= gets + 3, what="three polls")
    assert api_requests(op, WRITES) == writes
    after_many_rounds(op)
    assert len(helm_history(cluster, ns)) == 2  # once, not on every reconcile
    assert generation(cluster, ns, "hub") == gen + 1


def test_shared_password_rotation_restarts_hub_once(cluster, namespace, operator_factory):
    ns = namespace
    op = operator_factory([ns], env=SECRET_POLL)
    sp = {"mode": "sharedPassword", "sharedPassword": {"secretRef": {"name": "pw", "key": "password"}}}
    apply(cluster, ns, secret("db", DATABASE_URL="postgresql://u:p@db/hub"), secret("pw", password="first"))
    apply(cluster, ns, hub(auth=sp))
    wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="hub Ready")
    before = hub_pod_annotation(cluster, ns)
    assert not any(h in before[SECRETS_ANNOTATION] for h in content_hashes("first"))
    gen = generation(cluster, ns, "hub")
    apply(cluster, ns, secret("pw", password="second"))
    wait_until(lambda: hub_pod_annotation(cluster, ns) != before, timeout=60, what="hub restarted")
    # The upgrade finished (a restart during it would leave it pending, repaired by a rollback).
    wait_until(lambda: release_revision(cluster, ns) == 2, timeout=60, what="revision 2 in status")
    after_many_rounds(op)
    assert len(helm_history(cluster, ns)) == 2
    assert generation(cluster, ns, "hub") == gen + 1


def test_gateway_secret_rotation_restarts_oauth2_proxy_once(cluster, namespace, operator_factory):
    ns = namespace
    op = operator_factory([ns], env=SECRET_POLL)
    oidc = dict(
        client_id="coursehub", client_secret="first-secret", cookie_secret="0123456789abcdef0123456789abcdef"
    )
    apply(
        cluster, ns, secret("db", DATABASE_URL="postgresql://u:p@db/hub"), secret("oidc", **oidc), gated_hub()
    )
    wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="gated hub Ready")

    def gate_annotations() -> dict:
        dep = get_yaml(cluster, "deployment", "coursehub-gateway", "-n", ns)
        return dep["spec"]["template"]["metadata"].get("annotations") or {}

    before = gate_annotations()
    assert not any(h in json.dumps(before) for h in content_hashes(*oidc.values()))
    gen, releases = generation(cluster, ns, "coursehub-gateway"), len(helm_history(cluster, ns))
    apply(cluster, ns, secret("oidc", **{**oidc, "client_secret": "rotated-secret"}))
    wait_until(lambda: gate_annotations() != before, timeout=60, what="oauth2-proxy restarted")
    after_many_rounds(op)
    assert generation(cluster, ns, "coursehub-gateway") == gen + 1  # exactly once
    assert len(helm_history(cluster, ns)) == releases  # the hub does not read this Secret


def test_chart_policy_and_tmp_through_values_are_refused_at_reconcile(cluster, namespace, operator_factory):
    ns = namespace
    operator_factory([ns])
    apply(cluster, ns, secret("db", DATABASE_URL="postgresql://u:p@db/hub"))
    evil = hub(
        chart={"repository": "https://charts.example.invalid/", "name": "jupyterhub", "version": "4.4.0"}
    )
    apply(cluster, ns, evil)
    c = wait_until(
        lambda: (x := cond(cluster, ns, "ReleaseDeployed")).get("reason") == "InvalidChart" and x,
        what="InvalidChart",
    )
    assert "spec.chart.repository" in c["message"] and "https://hub.jupyter.org/helm-chart/" in c["message"]
    assert helm_history(cluster, ns) == []
    # tmp chosen through spec.values, with no gate and no allowUngated: the CEL rule cannot see it
    sp = {"mode": "sharedPassword", "sharedPassword": {"secretRef": {"name": "db", "key": "DATABASE_URL"}}}
    sneaky = hub(auth=sp, values={"hub": {"config": {"JupyterHub": {"authenticator_class": "tmp"}}}})
    apply(cluster, ns, sneaky)
    c = wait_until(
        lambda: (x := cond(cluster, ns, "ReleaseDeployed")).get("reason") == "InvalidValues" and x,
        what="InvalidValues for tmp through values",
    )
    assert "spec.values.hub.config.JupyterHub.authenticator_class" in c["message"]
    assert helm_history(cluster, ns) == []
    # and privileged pods through values
    apply(cluster, ns, hub(values={"hub": {"containerSecurityContext": {"privileged": True}}}))
    c = wait_until(
        lambda: (
            (x := cond(cluster, ns, "ReleaseDeployed"))
            .get("message", "")
            .startswith("spec.values.hub.containerSecurityContext.privileged")
            and x
        ),
        what="InvalidValues for privileged",
    )
    assert c["reason"] == "InvalidValues"
    assert helm_history(cluster, ns) == []


def test_invalid_values_keep_release_untouched(cluster, namespace, operator_factory):
    ns = namespace
    operator_factory([ns])
    apply(cluster, ns, secret("db", DATABASE_URL="postgresql://u:p@db/hub"), hub())
    wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="hub Ready")
    apply(cluster, ns, hub(values={"proxy": {"service": {"type": "ClusterIP"}}, "hub": {"notAKey": 1}}))
    c = wait_until(
        lambda: (x := cond(cluster, ns, "ReleaseDeployed")).get("reason") == "InvalidValues" and x,
        what="InvalidValues",
    )
    assert "spec.values.hub.notAKey" in c["message"]
    assert cond(cluster, ns, "Ready")["status"] == "False"
    assert len(helm_history(cluster, ns)) == 1
    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", "reason=InvalidValues").stdout
    assert "learn" in events


def test_failing_upgrade_rolls_back_and_recovers(cluster, namespace, operator_factory):
    ns = namespace
    operator_factory([ns])
    apply(cluster, ns, secret("db", DATABASE_URL="postgresql://u:p@db/hub"), hub())
    wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="hub Ready")
    # Valid for the schema and the operator's policy, refused by the API server: the upgrade
    # fails after helm rendered it.
    bad = {
        "proxy": {"service": {"type": "ClusterIP"}},
        "hub": {"resources": {"requests": {"cpu": "-1"}}},
    }
    apply(cluster, ns, hub(values=bad))
    c = wait_until(
        lambda: (
            (x := cond(cluster, ns, "ReleaseDeployed")).get("status") == "False"
            and x.get("reason") != "Progressing"
            and x
        ),
        timeout=120,
        what="failed upgrade reported",
    )
    assert "previous release stays" in c["message"]
    history = helm_history(cluster, ns)
    assert history[-1]["status"] == "deployed"  # rolled back
    assert get_yaml(cluster, "deployment", "hub", "-n", ns)["status"].get("readyReplicas") == 1
    apply(cluster, ns, hub())
    wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="recovered after the fix")


def test_two_hubs_in_one_namespace(cluster, namespace, operator_factory):
    ns = namespace
    operator_factory([ns])
    apply(cluster, ns, secret("db", DATABASE_URL="postgresql://u:p@db/hub"), hub("first"))
    wait_until(lambda: ready_on_generation(cluster, ns, "first"), timeout=120, what="first hub Ready")
    apply(cluster, ns, hub("second"))
    c = wait_until(
        lambda: (x := cond(cluster, ns, "Ready", "second")).get("reason") == "NamespaceTaken" and x,
        what="NamespaceTaken",
    )
    assert "first" in c["message"] and c["status"] == "False"
    assert helm_history(cluster, ns, "second") == []
    assert ready_on_generation(cluster, ns, "first")


def test_delete_hub_cleans_up(cluster, namespace, operator_factory, oci_registry, unique_repo):
    ns = namespace
    operator_factory([ns])
    oci_registry.push_image(unique_repo, "c1", "c1")
    course = {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": "CourseImage",
        "metadata": {"name": "c1"},
        "spec": {"course": "c1", "image": oci_registry.ref(unique_repo, "c1")},
    }
    apply(cluster, ns, secret("db", DATABASE_URL="postgresql://u:p@db/hub"), hub(), course)
    cluster.kubectl("wait", "--for=condition=Ready", "courseimage/c1", "-n", ns, "--timeout=120s")
    wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="hub Ready")
    cluster.kubectl("delete", "jhd", "learn", "-n", ns, "--timeout=90s")
    assert helm_history(cluster, ns) == []
    wait_until(
        lambda: (
            not get_yaml(
                cluster,
                "configmap,daemonset,deployment",
                "-n",
                ns,
                "-l",
                "app.kubernetes.io/managed-by=coursehub",
            )["items"]
        ),
        timeout=60,
        what="owned objects garbage-collected",
    )
    c = wait_until(
        lambda: (
            (x := condition(get_yaml(cluster, "courseimage", "c1", "-n", ns), "Published")).get("reason")
            == "NoHub"
            and x
        ),
        what="course reports it is no longer published",
    )
    assert c["status"] == "False"
    assert get_yaml(cluster, "secret", "db", "-n", ns)["data"]  # the database secret is never touched


@pytest.mark.parametrize("operator_during_deletion", ["paused", "stopped"])
def test_deleting_the_namespace_of_a_deployed_hub_finishes(
    cluster, operator_factory, operator_during_deletion
):
    """`kubectl delete namespace` with a deployed hub in it: the namespace's deletion removes the
    tenant RoleBinding Helm impersonates, so an uninstall is refused and the hub's finalizer
    would hold the namespace for ever; the release goes with the namespace instead.

    The RoleBinding is surely gone before the operator handles the hub's deletion: "paused"
    (SIGSTOP, its watches stay open; running, the uninstall usually won the race) and
    "stopped", then started again. The second also catches kopf's namespace scanning coming
    back: it adds no namespace that is already terminating when it starts, and drops one whose
    deletion's first conditions are all False, so the hub's deletion would never arrive
    (operator_main.build_registry: settings.scanning.disabled)."""
    ns = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        op = operator_factory([ns])
        apply(cluster, ns, secret("db", DATABASE_URL="postgresql://u:p@db/hub"), hub())
        wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="hub Ready")
        assert [r["status"] for r in helm_history(cluster, ns)] == ["deployed"]
        if operator_during_deletion == "paused":
            os.killpg(op.proc.pid, signal.SIGSTOP)
        else:
            op.stop()
        try:
            cluster.kubectl("delete", "namespace", ns, "--wait=false")
            wait_until(
                lambda: not get_yaml(cluster, "rolebindings", "-n", ns)["items"],
                timeout=60,
                what="the namespace's RoleBindings deleted (the hub's finalizer holds the namespace)",
            )
        finally:
            if operator_during_deletion == "paused":
                os.killpg(op.proc.pid, signal.SIGCONT)
            else:
                op.start()
        gone = lambda: cluster.kubectl("get", "namespace", ns, check=False).returncode != 0  # noqa: E731
        try:
            wait_until(gone, timeout=180, what="namespace gone")
        except Exception as e:
            # What holds the namespace (its conditions name it) and the hub's finalizers.
            held = cluster.kubectl("get", "namespace", ns, "-o", "jsonpath={.status.conditions}", check=False)
            hubs = cluster.kubectl(
                "get",
                "jhd",
                "-n",
                ns,
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp} "
                "{.metadata.finalizers}{'\\n'}{end}",
                check=False,
            )
            raise AssertionError(
                f"{e}\nnamespace conditions: {held.stdout}\nhubs: {hubs.stdout}\n"
                f"operator log:\n{op.log()[-4000:]}"
            ) from None
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def gated_hub() -> dict:
    return hub(
        auth={"mode": "tmp"},
        gateway={
            "oidc": {
                "issuerURL": "https://sso.example.edu/realms/olapps",
                "secretRef": {"name": "oidc"},
                "allowedGroups": ["learners"],
            }
        },
        values={},  # the proxy's Service is the operator's business behind a gate
    )


def test_objects_a_hub_no_longer_wants_are_pruned_after_a_restart(cluster, namespace, operator_factory):
    """With the chart's rights, not admin's: after a restart the operator finds a hub's objects
    by listing them (by label), so the gate's Deployment, Service and NetworkPolicy go when
    the spec dropped the gate while the operator was down."""
    ns = namespace
    op = operator_factory([ns], identity="chart")
    oidc = dict(client_id="c", client_secret="s", cookie_secret="0123456789abcdef0123456789abcdef")
    apply(cluster, ns, secret("db", DATABASE_URL="postgresql://u:p@db/hub"), secret("oidc", **oidc))
    apply(cluster, ns, gated_hub())
    wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="gated hub Ready")
    gate = [
        ("deployment", "coursehub-gateway"),
        ("service", "coursehub-gateway"),
        ("networkpolicy", "coursehub-gateway-only"),
    ]

    def present() -> list[tuple[str, str]]:
        out = cluster.kubectl("get", *(f"{k}/{n}" for k, n in gate), "-n", ns, "-o", "name", check=False)
        found = {(line.split("/")[0].split(".")[0], line.split("/")[1]) for line in out.stdout.split()}
        return [g for g in gate if g in found]

    assert present() == gate
    op.kill()
    apply(cluster, ns, hub())  # no gate any more
    op.start()
    wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="ungated hub Ready")
    wait_until(lambda: present() == [], timeout=60, what="the gate's objects pruned")
    assert "may not list" not in op.log()


def test_oidc_gateway_in_front_of_tmp_users(cluster, namespace, operator_factory):
    ns = namespace
    operator_factory([ns])
    gated = gated_hub()
    apply(cluster, ns, secret("db", DATABASE_URL="postgresql://u:p@db/hub"), gated)
    c = wait_until(
        lambda: (x := cond(cluster, ns, "GatewayReady")).get("status") == "False" and x,
        what="missing gateway secret reported",
    )
    assert c["reason"] == "SecretNotFound" and "oidc" in c["message"]
    apply(
        cluster,
        ns,
        secret(
            "oidc",
            client_id="coursehub",
            client_secret="s3cret-value",
            cookie_secret="0123456789abcdef0123456789abcdef",
        ),
    )
    wait_until(lambda: ready_on_generation(cluster, ns), timeout=120, what="gated hub Ready")
    cluster.kubectl("rollout", "status", "deployment/coursehub-gateway", "-n", ns, "--timeout=60s")
    dep = get_yaml(cluster, "deployment", "coursehub-gateway", "-n", ns)
    owner = dep["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "JupyterHubDeployment" and owner["name"] == "learn"
    pod = dep["spec"]["template"]["spec"]
    text = json.dumps(dep)
    assert "s3cret-value" not in text  # referenced, never copied
    refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in pod["containers"][0]["env"] if "valueFrom" in e}
    assert {"client_id", "client_secret", "cookie_secret"} <= refs
    assert any("keycloak-oidc" in a for a in pod["containers"][0]["args"])
    svc = get_yaml(cluster, "service", "coursehub-gateway", "-n", ns)
    assert svc["spec"]["ports"]
    # proxy-public takes traffic only from the gate's pods (issue 12, item 4)
    netpol = get_yaml(cluster, "networkpolicy", "coursehub-gateway-only", "-n", ns)
    assert netpol["metadata"]["ownerReferences"][0]["name"] == "learn"
    proxy = get_yaml(cluster, "deployment", "proxy", "-n", ns)["spec"]["template"]["metadata"]["labels"]
    assert all(proxy.get(k) == v for k, v in netpol["spec"]["podSelector"]["matchLabels"].items())
    gate_pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    http = netpol["spec"]["ingress"][0]
    assert all(gate_pod_labels.get(k) == v for k, v in http["from"][0]["podSelector"]["matchLabels"].items())
    # Helm ran as the hub's tenant account, which the operator created and bound
    sa = get_yaml(cluster, "serviceaccount", "coursehub-helm", "-n", ns)
    assert sa["metadata"]["ownerReferences"][0]["name"] == "learn"
    rb = get_yaml(cluster, "rolebinding", "coursehub-helm", "-n", ns)
    assert rb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "coursehub-tenant",
    }
