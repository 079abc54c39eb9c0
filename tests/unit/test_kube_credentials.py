"""Credential loading: in-cluster ServiceAccount and kubeconfig (token, tokenFile, client
certificates, exec plugins), against a real TLS server on loopback. The 401 reload itself is
tested on the real API server in e2e."""

from __future__ import annotations

import contextlib
import ssl
import tempfile
from pathlib import Path

import pytest

from coursehub.kube import KubeconfigError, kubeconfig_credentials, service_account_credentials

CA = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture
def sa_dir(tmp_path):
    if not CA.exists():
        pytest.skip("no system CA bundle to stand in for the cluster CA")
    (tmp_path / "token").write_text("tok-1\n")
    (tmp_path / "ca.crt").write_bytes(CA.read_bytes())
    return tmp_path


def test_outside_a_cluster_there_are_none(sa_dir, tmp_path):
    assert service_account_credentials(sa_dir, {}) is None
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert service_account_credentials(tmp_path / "missing", env) is None


def test_token_and_address(sa_dir):
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    creds = service_account_credentials(sa_dir, env)
    assert creds is not None
    assert creds.host == "https://10.0.0.1:443"
    assert creds.headers == {"Authorization": "Bearer tok-1"}
    # Each load reads the file again: the kubelet rotates it.
    (sa_dir / "token").write_text("tok-2")
    assert service_account_credentials(sa_dir, env).headers == {"Authorization": "Bearer tok-2"}


def test_ipv6_service_address_is_bracketed(sa_dir):
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert service_account_credentials(sa_dir, env).host == "https://[fd00::1]:443"


# -- kubeconfig: our own loader (kubernetes_asyncio's costs ~77 MB of RSS) ---------------------


def _pki(d: Path) -> dict[str, bytes]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (CN=course-operator)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def pem_key(k) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def cert(cn, key, issuer_name, issuer_key, *, ca=False, san=None):
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    ca = cert("test-ca", ca_key, ca_name, ca_key, ca=True)
    srv_key, cli_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    srv = cert("server", srv_key, ca_name, ca_key, san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cli = cert("course-operator", cli_key, ca_name, ca_key)
    out = {
        "ca": ca.public_bytes(serialization.Encoding.PEM),
        "srv": srv.public_bytes(serialization.Encoding.PEM),
        "srv_key": pem_key(srv_key),
        "cli": cli.public_bytes(serialization.Encoding.PEM),
        "cli_key": pem_key(cli_key),
    }
    for name, data in out.items():
        (d / name).write_bytes(data)
    return out


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _kubeconfig(d: Path, cluster: dict, user: dict) -> Path:
    import yaml

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path = d / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def _who_answers(creds) -> str:
    """One HTTPS request on loopback to the TLS server started by `mtls_server`."""
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.get(creds.host + "/whoami", ssl=creds.ssl, headers=creds.headers) as resp,
    ):
        return await resp.text()


@contextlib.asynccontextmanager
async def mtls_server(tmp_path):
    """A real TLS server on loopback, signed by a test CA, that names the client certificate's CN
    and the bearer token it was shown (so a test can assert who answered)."""
    from aiohttp import web

    pki = _pki(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca"))
    ctx.load_cert_chain(str(tmp_path / "srv"), str(tmp_path / "srv_key"))
    ctx.verify_mode = ssl.CERT_OPTIONAL

    async def whoami(request):
        peer = request.transport.get_extra_info("peercert") or {}
        cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), "-")
        return web.Response(text=f"test-apiserver cn={cn} auth={request.headers.get('Authorization', '-')}")

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}", pki
    finally:
        await runner.cleanup()


async def test_kubeconfig_token_and_token_file(tmp_path):
    async with mtls_server(tmp_path) as (server, _):
        path = _kubeconfig(tmp_path, {"server": server, "certificate-authority": "ca"}, {"token": "tok-a"})
        creds = await kubeconfig_credentials(path)
        assert creds.host == server and creds.headers == {"Authorization": "Bearer tok-a"}
        # The CA path is relative to the kubeconfig, and the server is verified against it.
        assert await _who_answers(creds) == "test-apiserver cn=- auth=Bearer tok-a"

        (tmp_path / "tok").write_text("tok-b\n")
        path = _kubeconfig(tmp_path, {"server": server, "certificate-authority": "ca"}, {"tokenFile": "tok"})
        assert (await kubeconfig_credentials(path)).headers == {"Authorization": "Bearer tok-b"}
        (tmp_path / "tok").write_text("tok-c")  # read again on each load (the 401 reload)
        assert (await kubeconfig_credentials(path)).headers == {"Authorization": "Bearer tok-c"}


async def test_kubeconfig_client_certificate_data_from_memory(tmp_path):
    async with mtls_server(tmp_path) as (server, pki):
        user = {"client-certificate-data": _b64(pki["cli"]), "client-key-data": _b64(pki["cli_key"])}
        path = _kubeconfig(tmp_path, {"server": server, "certificate-authority-data": _b64(pki["ca"])}, user)
        before = set(Path(tempfile.gettempdir()).glob("coursehub-cert-*"))
        creds = await kubeconfig_credentials(path)
        assert creds.headers == {}
        assert await _who_answers(creds) == "test-apiserver cn=course-operator auth=-"
        # The key went through a private file that is gone once loaded.
        assert set(Path(tempfile.gettempdir()).glob("coursehub-cert-*")) == before


async def test_kubeconfig_server_is_verified(tmp_path):
    """Without the cluster's CA the test server's certificate is refused (no silent skip)."""
    import aiohttp

    async with mtls_server(tmp_path) as (server, _):
        creds = await kubeconfig_credentials(_kubeconfig(tmp_path, {"server": server}, {"token": "t"}))
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _who_answers(creds)


PLUGIN = """
import json, os, pathlib, sys
here = pathlib.Path(sys.argv[0]).parent
with open(here / "runs", "a") as f:
    f.write(os.environ["KUBERNETES_EXEC_INFO"] + "\\n")
kind = sys.argv[1]
if kind == "fail":
    print("no session: run aws sso login", file=sys.stderr)
    sys.exit(3)
status = {"token": os.environ["PLUGIN_TOKEN"]} if kind == "token" else {
    "clientCertificateData": (here / "cli").read_text(),
    "clientKeyData": (here / "cli_key").read_text(),
}
cred = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": status}
print(json.dumps(cred))
"""


def _exec_user(tmp_path: Path, kind: str, api_version: str = "client.authentication.k8s.io/v1") -> dict:
    import sys

    (tmp_path / "plugin.py").write_text(PLUGIN)
    return {
        "exec": {
            "apiVersion": api_version,
            "command": sys.executable,
            "args": [str(tmp_path / "plugin.py"), kind],
            "env": [{"name": "PLUGIN_TOKEN", "value": "from-plugin"}],
            "interactiveMode": "Never",
            "provideClusterInfo": True,
        }
    }


async def test_kubeconfig_exec_plugin_token_runs_on_each_load(tmp_path):
    import json

    async with mtls_server(tmp_path) as (server, _):
        path = _kubeconfig(
            tmp_path, {"server": server, "certificate-authority": "ca"}, _exec_user(tmp_path, "token")
        )
        creds = await kubeconfig_credentials(path)
        assert await _who_answers(creds) == "test-apiserver cn=- auth=Bearer from-plugin"
        await kubeconfig_credentials(path)
        runs = [json.loads(line) for line in (tmp_path / "runs").read_text().splitlines()]
        assert len(runs) == 2
        assert runs[0]["spec"] == {"interactive": False, "cluster": {"server": server}}


async def test_kubeconfig_exec_plugin_client_certificate(tmp_path):
    async with mtls_server(tmp_path) as (server, _):
        user = _exec_user(tmp_path, "cert", "client.authentication.k8s.io/v1beta1")
        path = _kubeconfig(tmp_path, {"server": server, "certificate-authority": "ca"}, user)
        creds = await kubeconfig_credentials(path)
        assert await _who_answers(creds) == "test-apiserver cn=course-operator auth=-"


async def test_kubeconfig_exec_plugin_failure_names_the_field_and_says_why(tmp_path):
    path = _kubeconfig(tmp_path, {"server": "https://127.0.0.1:1"}, _exec_user(tmp_path, "fail"))
    with pytest.raises(
        KubeconfigError, match=r"users\[name=u\]\.user\.exec\.command .* exited with 3: no session"
    ):
        await kubeconfig_credentials(path)


@pytest.mark.parametrize(
    ("cluster", "user", "field"),
    [
        (
            {"certificate-authority-data": "eA=="},
            {"token": "t"},
            r"clusters\[name=c\]\.cluster\.server is missing",
        ),
        ({"server": "https://x"}, {}, r"users\[name=u\]\.user has no credentials"),
        (
            {"server": "https://x"},
            {"auth-provider": {"name": "oidc"}},
            r"user\.auth-provider is not supported",
        ),
        (
            {"server": "https://x"},
            {"client-certificate-data": "eA=="},
            r"user\.client-key\(-data\) is missing",
        ),
        (
            {"server": "https://x", "proxy-url": "http://p"},
            {"token": "t"},
            r"cluster\.proxy-url is not supported",
        ),
        (
            {"server": "https://x"},
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "aws"}},
            r"user\.exec\.apiVersion is 'client.authentication.k8s.io/v1alpha1'",
        ),
        (
            {"server": "https://x"},
            {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": "no-such-plugin-xyz",
                    "installHint": "install the no-such CLI",
                }
            },
            r"exec\.command 'no-such-plugin-xyz' was not found: install the no-such CLI",
        ),
    ],
)
async def test_kubeconfig_errors_name_the_field(tmp_path, cluster, user, field):
    with pytest.raises(KubeconfigError, match=field):
        await kubeconfig_credentials(_kubeconfig(tmp_path, cluster, user))


async def test_kubeconfig_missing_context_and_file(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with pytest.raises(KubeconfigError, match="current-context is missing"):
        await kubeconfig_credentials(path)
    with pytest.raises(KubeconfigError, match=r"no kubeconfig at .*set KUBECONFIG"):
        await kubeconfig_credentials(environ={"KUBECONFIG": str(tmp_path / "absent")})
