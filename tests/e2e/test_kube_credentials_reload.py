"""kube.Kube loads its credentials again when the API server answers 401, on the real API server.

Tokens are real ServiceAccount tokens (TokenRequest) bound to a Secret: deleting the Secret
revokes the token, as an expired EKS token or a rotated-out ServiceAccount token would be
refused. The exec plugin is a real process started by kubernetes_asyncio from a kubeconfig;
it hands out whatever token the test last wrote, and counts its runs.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from coursehub.kube import CONFIG_MAPS, Kube, KubeError, environment_credentials, kubeconfig_credentials
from fixtures.cluster import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.own_control_plane("client certificates and ServiceAccount CA from the dev cluster's PKI"),
]

PLUGIN = """
import json, pathlib
here = pathlib.Path(__file__).parent
with open(here / "runs", "a") as f:
    f.write("run\\n")
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {"token": (here / "token").read_text().strip()},
}))
"""


class Tokens:
    """ServiceAccount `reader` (may list ConfigMaps in one namespace); one Secret per token."""

    def __init__(self, cluster, namespace: str):
        self.cluster, self.ns = cluster, namespace
        k = functools.partial(cluster.kubectl, "-n", namespace)
        k("create", "serviceaccount", "reader")
        k("create", "role", "reader", "--verb=get,list", "--resource=configmaps")
        k("create", "rolebinding", "reader", "--role=reader", f"--serviceaccount={namespace}:reader")

    def mint(self, name: str) -> str:
        k = functools.partial(self.cluster.kubectl, "-n", self.ns)
        k("create", "secret", "generic", name)
        uid = k("get", "secret", name, "-o", "jsonpath={.metadata.uid}").stdout.strip()
        out = k(
            "create",
            "token",
            "reader",
            "--bound-object-kind=Secret",
            f"--bound-object-name={name}",
            f"--bound-object-uid={uid}",
        )
        token = out.stdout.strip()
        wait_until(lambda: self.status(token) == 200, what=f"token {name} accepted")
        return token

    def revoke(self, name: str, token: str) -> None:
        self.cluster.kubectl("-n", self.ns, "delete", "secret", name)
        # The API server notices the bound Secret is gone through its informer: wait for that.
        wait_until(lambda: self.status(token) == 401, what=f"token {name} refused")

    def status(self, token: str) -> int:
        ctx = ssl.create_default_context(cafile=str(self.cluster.pki_dir / "ca.crt"))
        req = urllib.request.Request(
            f"{self.cluster.server}/api/v1/namespaces/{self.ns}/configmaps",
            headers={"Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code


@pytest.fixture
def tokens(cluster, namespace) -> Tokens:
    return Tokens(cluster, namespace)


def exec_kubeconfig(cluster, d: Path) -> Path:
    (d / "plugin.py").write_text(PLUGIN)
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(cluster.pki_dir / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": "u",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": sys.executable,
                        "args": [str(d / "plugin.py")],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path = d / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path


def runs(d: Path) -> int:
    return len((d / "runs").read_text().splitlines())


async def test_exec_plugin_runs_again_after_a_401(cluster, namespace, tokens, tmp_path):
    (tmp_path / "token").write_text(tokens.mint("a"))
    kube = await Kube.from_environment(
        functools.partial(kubeconfig_credentials, exec_kubeconfig(cluster, tmp_path))
    )
    try:
        assert runs(tmp_path) == 1
        await kube.list(CONFIG_MAPS, namespace)
        assert runs(tmp_path) == 1 and kube.credential_reloads == 0

        # The plugin's token expires (revoked here); the plugin would now hand out a fresh one.
        tokens.revoke("a", (tmp_path / "token").read_text())
        (tmp_path / "token").write_text(tokens.mint("b"))
        before = sum(kube.reads.values())
        assert await kube.list(CONFIG_MAPS, namespace) is not None
        assert runs(tmp_path) == 2 and kube.credential_reloads == 1
        assert sum(kube.reads.values()) == before + 2  # the refused request and its one retry

        # Fresh credentials stay: no plugin run, one request.
        await kube.get_or_none(CONFIG_MAPS, "absent", namespace)
        assert runs(tmp_path) == 2 and sum(kube.reads.values()) == before + 3

        # Many requests refused at once reload once.
        tokens.revoke("b", (tmp_path / "token").read_text())
        (tmp_path / "token").write_text(tokens.mint("c"))
        await asyncio.gather(*(kube.list(CONFIG_MAPS, namespace) for _ in range(6)))
        assert runs(tmp_path) == 3 and kube.credential_reloads == 2

        # A source with nothing better: one reload, then the 401 reaches the caller (no loop).
        tokens.revoke("c", (tmp_path / "token").read_text())
        with pytest.raises(KubeError) as e:
            await kube.list(CONFIG_MAPS, namespace)
        assert e.value.status == 401
        assert runs(tmp_path) == 4
    finally:
        await kube.close()


async def test_in_cluster_token_file_is_read_again_after_a_401(cluster, namespace, tokens, tmp_path):
    """The kubelet rotates the projected ServiceAccount token in the pod's token file."""
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "ca.crt").write_bytes((cluster.pki_dir / "ca.crt").read_bytes())
    (sa_dir / "token").write_text(tokens.mint("a"))
    environ = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(cluster.ports["apiserver"]),
    }
    kube = await Kube.from_environment(
        functools.partial(environment_credentials, sa_dir=sa_dir, environ=environ)
    )
    try:
        await kube.list(CONFIG_MAPS, namespace)
        tokens.revoke("a", (sa_dir / "token").read_text())
        (sa_dir / "token").write_text(tokens.mint("b"))
        await kube.list(CONFIG_MAPS, namespace)
        assert kube.credential_reloads == 1
    finally:
        await kube.close()
