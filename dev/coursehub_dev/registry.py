"""A real OCI registry on loopback (Debian's ``docker-registry`` as a plain process) and tiny
generated images to fill it: used by the tests (tests/fixtures/registry.py), the benchmarks
and `make demo`.

Fixtures
--------
``oci_registry`` (session)
    An anonymous registry on ``127.0.0.1:<free port>``; yields an ``OciRegistry``.
``oci_registry_auth`` (session)
    The same with htpasswd (HTTP basic) auth; ``.docker_config`` holds a
    dockerconfigjson document with its credentials.
``oci_registry_token`` (session)
    A registry with token auth (the Docker token spec, as Docker Hub, GHCR and
    Harbor use): a small token service in this module checks credentials and
    issues RS256 JWTs that the registry itself verifies.
``oci_registry_factory`` (session)
    ``factory(auth=None) -> OciRegistry`` (auth: None, "htpasswd" or "token"):
    a private registry, for tests that stop and start it (outages) without
    disturbing other tests. All are stopped at the end of the session.
``unique_repo`` (function)
    A repository name no other test uses.

(ECR lives in fixtures/ecr.py: ``ecr_endpoint``, ``ecr_proxy``.)

Images are generated, tiny and deterministic: ``push_image(repo, tag, seed)``
pushes a config blob and one gzipped tar layer whose content derives from
``seed`` (same seed -> same digest, new seed -> new digest) through the
registry's HTTP API; ``push_index`` pushes a two-platform OCI index or Docker
manifest list; ``skopeo_copy`` copies a generated ``oci:`` layout with skopeo.

Needs the Debian packages ``docker-registry``, ``skopeo`` and ``apache2-utils``
(``htpasswd``, for bcrypt entries), and the Python package ``cryptography``
(locked already, through moto) for the token service.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from base64 import b64decode, b64encode, urlsafe_b64encode
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
import requests.auth

from .waiting import free_port, wait_until

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

_MEDIA = {
    "oci": (OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, OCI_LAYER),
    "docker": (DOCKER_MANIFEST, DOCKER_LIST, DOCKER_CONFIG, DOCKER_LAYER),
}


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name!r} not found on PATH; install the Debian package {package!r}")
    return path


def _json_bytes(document: dict) -> bytes:
    # Canonical bytes, so the same content always gets the same digest.
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def build_image(
    content_seed: str, *, platform: str = "linux/amd64", media: str = "oci"
) -> tuple[bytes, dict[str, bytes]]:
    """A tiny image: ``(manifest bytes, {digest: blob})``; same inputs, same bytes."""
    manifest_type, _, config_type, layer_type = _MEDIA[media]
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        payload = f"coursehub test image\nseed={content_seed}\nplatform={platform}\n".encode()
        info = tarfile.TarInfo("coursehub-seed.txt")
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        tar.addfile(info, io.BytesIO(payload))
    layer_tar = tar_buffer.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    os_name, _, arch = platform.partition("/")
    config = _json_bytes(
        {
            "architecture": arch,
            "os": os_name,
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [_sha256(layer_tar)]},
        }
    )
    manifest = _json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {
                "mediaType": config_type,
                "digest": _sha256(config),
                "size": len(config),
            },
            "layers": [{"mediaType": layer_type, "digest": _sha256(layer), "size": len(layer)}],
        }
    )
    return manifest, {_sha256(config): config, _sha256(layer): layer}


def _b64url(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """A token service after the Docker token spec, serving ``GET /token`` on loopback.

    Valid basic credentials get the actions they ask for; anonymous requests get
    a token with no access (as Docker Hub does for private repositories), and
    wrong credentials get 401. Tokens are RS256 JWTs carrying the signing
    certificate in ``x5c``; the registry trusts it through ``rootcertbundle``.
    """

    issuer = "coursehub-test-token-issuer"
    service = "coursehub-test-registry"

    def __init__(self, workdir: Path, users: dict[str, str]) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users = users
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        now = time.time()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(now - 86400, datetime.UTC))
            .not_valid_after(datetime.datetime.fromtimestamp(now + 86400, datetime.UTC))
            .sign(self._key, hashes.SHA256())
        )
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.root_cert_path = workdir / "token-root.pem"
        self.root_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self.requests: list[tuple[str | None, str]] = []  # (user, scope) seen, for assertions
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def mint(self, subject: str, access: list[dict]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [b64encode(self._cert_der).decode()],
        }
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "iat": now,
            # Generous skew window: the registry and this service share a clock anyway.
            "nbf": now - 60,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(_json_bytes(header))}.{_b64url(_json_bytes(claims))}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    @staticmethod
    def access_for(scopes: list[str]) -> list[dict]:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append(
                {
                    "type": kind,
                    "name": name,
                    "actions": [a for a in actions.split(",") if a],
                }
            )
        return access

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as token services are (the operator reuses its connections).
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                scopes = query.get("scope", [])
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = b64decode(header[6:]).decode().partition(":")
                    if service.users.get(user) != password:
                        service.requests.append((user, ",".join(scopes)))
                        refusal = b'{"details":"incorrect username or password"}'
                        self.send_response(401)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(refusal)))
                        self.end_headers()
                        self.wfile.write(refusal)
                        return
                service.requests.append((user, ",".join(scopes)))
                access = service.access_for(scopes) if user else []
                token = service.mint(user or "anonymous", access)
                body = json.dumps({"token": token, "access_token": token, "expires_in": 600}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


class _MintedBearer(requests.auth.AuthBase):
    """Push helpers' auth on a token registry: mint a push token for the URL's repository."""

    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        path = urlsplit(str(request.url)).path.removeprefix("/v2/")
        for marker in ("/blobs/", "/manifests/", "/tags/"):
            if marker in path:
                repo = path.split(marker, 1)[0]
                access = [
                    {
                        "type": "repository",
                        "name": repo,
                        "actions": ["pull", "push", "delete"],
                    }
                ]
                request.headers["Authorization"] = "Bearer " + self.tokens.mint("fixture", access)
                break
        return request


class OciRegistry:
    """One ``docker-registry`` process on loopback, plus helpers to fill it.

    ``host`` is ``127.0.0.1:<port>``; ``ref(repo, tag)`` builds references.
    ``stop()``/``start()`` keep port and storage, so images survive an outage.
    """

    def __init__(self, workdir: Path, *, auth: str | None = None, address: str = "127.0.0.1") -> None:
        """`address`: where it listens; real nodes use the host bridge address (pods and
        containerd reach it under one name), everything else loopback."""
        if auth not in (None, "htpasswd", "token"):
            raise ValueError(f"auth must be None, 'htpasswd' or 'token', not {auth!r}")
        self.workdir = workdir
        self.port = free_port()
        self.host = f"{address}:{self.port}"
        self.url = f"http://{self.host}"
        self.username: str | None = None
        self.password: str | None = None
        self.tokens: TokenService | None = None
        self._process: subprocess.Popen | None = None
        self._log_path = workdir / "registry.log"
        (workdir / "storage").mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(workdir / "storage")},
                "delete": {"enabled": True},
                # No background goroutines touching storage during tests.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": uuid.uuid4().hex},
        }
        username, password = "course-author", uuid.uuid4().hex
        if auth:
            self.username, self.password = username, password
        if auth == "htpasswd":
            htpasswd = subprocess.run(
                [_tool("htpasswd", "apache2-utils"), "-Bbn", username, password],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (workdir / "htpasswd").write_text(htpasswd)
            config["auth"] = {
                "htpasswd": {
                    "realm": "coursehub-test",
                    "path": str(workdir / "htpasswd"),
                }
            }
        elif auth == "token":
            tokens = self.tokens = TokenService(workdir, {username: password})
            config["auth"] = {
                "token": {
                    "realm": tokens.realm,
                    "service": tokens.service,
                    "issuer": tokens.issuer,
                    "rootcertbundle": str(tokens.root_cert_path),
                }
            }
        # JSON is YAML, and needs no extra dependency to write.
        self.config_path = workdir / "config.yml"
        self.config_path.write_text(json.dumps(config, indent=2))
        self._http = requests.Session()
        if auth == "htpasswd":
            self._http.auth = (username, password)
        elif auth == "token":
            self._http.auth = _MintedBearer(tokens)

    # --- lifecycle ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, ready_within: float = 30.0) -> None:
        """Start (or restart) the process and wait until ``/v2/`` answers."""
        if self.running:
            return
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(
                [
                    _tool("docker-registry", "docker-registry"),
                    "serve",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def exited() -> str | None:
            if self._process is not None and self._process.poll() is not None:
                return f"docker-registry exited with {self._process.returncode}:\n{self.log_tail()}"
            return None

        def answers() -> bool:
            # 401 is an answer too: the auth variants refuse anonymous /v2/.
            return requests.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401)

        try:
            wait_until(answers, timeout=ready_within, interval=0.05, what=self.host, abort=exited)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"docker-registry did not come up on {self.host}:\n{self.log_tail()}"
            ) from None

    def stop(self) -> None:
        """Stop the process (connections to ``host`` are then refused)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # --- content -----------------------------------------------------------

    def ref(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        """``127.0.0.1:<port>/<repo>[:tag][@digest]``."""
        text = f"{self.host}/{repo}"
        if tag:
            text += f":{tag}"
        if digest:
            text += f"@{digest}"
        return text

    @property
    def docker_config(self) -> dict:
        """A dockerconfigjson document with this registry's credentials ({} auths if none)."""
        if self.username is None:
            return {"auths": {}}
        token = b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"auths": {self.host: {"auth": token}}}

    def _check(self, response: requests.Response, what: str) -> requests.Response:
        if response.status_code >= 300:
            raise RuntimeError(f"{what}: HTTP {response.status_code} {response.text[:300]}")
        return response

    def push_blob(self, repo: str, digest: str, data: bytes) -> None:
        if self._http.head(f"{self.url}/v2/{repo}/blobs/{digest}").status_code == 200:
            return
        started = self._check(self._http.post(f"{self.url}/v2/{repo}/blobs/uploads/"), "start upload")
        location = urljoin(self.url + "/", started.headers["Location"])
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        self._check(
            self._http.put(
                location,
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            ),
            f"upload {digest}",
        )

    def push_manifest(self, repo: str, reference: str, manifest: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or digest; returns its digest."""
        response = self._check(
            self._http.put(
                f"{self.url}/v2/{repo}/manifests/{reference}",
                data=manifest,
                headers={"Content-Type": media_type},
            ),
            f"push manifest {repo}:{reference}",
        )
        digest = response.headers.get("Docker-Content-Digest") or _sha256(manifest)
        assert digest == _sha256(manifest), "registry digest differs from the manifest's sha256"
        return digest

    def push_image(
        self,
        repo: str,
        tag: str | None,
        content_seed: str,
        *,
        platform: str = "linux/amd64",
        media: str = "oci",
    ) -> str:
        """Push a generated single-platform image; returns its manifest digest.

        ``tag=None`` pushes by digest only. ``media`` is ``"oci"`` or ``"docker"``.
        """
        manifest, blobs = build_image(content_seed, platform=platform, media=media)
        for digest, data in blobs.items():
            self.push_blob(repo, digest, data)
        return self.push_manifest(repo, tag or _sha256(manifest), manifest, _MEDIA[media][0])

    def push_index(
        self,
        repo: str,
        tag: str,
        content_seed: str,
        *,
        platforms: Sequence[str] = ("linux/amd64", "linux/arm64"),
        media: str = "oci",
    ) -> str:
        """Push one image per platform and an OCI index (or Docker manifest list,
        ``media="docker"``) over them under ``tag``; returns the index digest."""
        manifest_type, index_type, _, _ = _MEDIA[media]
        entries = []
        for platform in platforms:
            manifest, _ = build_image(content_seed, platform=platform, media=media)
            digest = self.push_image(repo, None, content_seed, platform=platform, media=media)
            os_name, _, arch = platform.partition("/")
            entries.append(
                {
                    "mediaType": manifest_type,
                    "digest": digest,
                    "size": len(manifest),
                    "platform": {"architecture": arch, "os": os_name},
                }
            )
        index = _json_bytes({"schemaVersion": 2, "mediaType": index_type, "manifests": entries})
        return self.push_manifest(repo, tag, index, index_type)

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest (and so every tag pointing at it)."""
        self._check(
            self._http.delete(f"{self.url}/v2/{repo}/manifests/{digest}"),
            f"delete {digest}",
        )

    def skopeo_copy(self, repo: str, tag: str, content_seed: str) -> str:
        """Write a generated image as an ``oci:`` layout and ``skopeo copy`` it in;
        returns the digest skopeo reports for the pushed manifest."""
        manifest, blobs = build_image(content_seed, media="oci")
        layout = Path(tempfile.mkdtemp(prefix="oci-layout-", dir=self.workdir))
        blob_dir = layout / "blobs" / "sha256"
        blob_dir.mkdir(parents=True)
        for digest, data in {**blobs, _sha256(manifest): manifest}.items():
            (blob_dir / digest.removeprefix("sha256:")).write_bytes(data)
        (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        (layout / "index.json").write_bytes(
            _json_bytes(
                {
                    "schemaVersion": 2,
                    "manifests": [
                        {
                            "mediaType": OCI_MANIFEST,
                            "digest": _sha256(manifest),
                            "size": len(manifest),
                            "annotations": {"org.opencontainers.image.ref.name": tag},
                        }
                    ],
                }
            )
        )
        digest_file = layout / "pushed-digest"
        # An explicit accept-anything policy: Debian may ship none for root.
        policy = layout / "policy.json"
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        command = [
            _tool("skopeo", "skopeo"),
            f"--policy={policy}",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"--digestfile={digest_file}",
        ]
        if self.username:
            command.append(f"--dest-creds={self.username}:{self.password}")
        command += [f"oci:{layout}:{tag}", f"docker://{self.ref(repo, tag)}"]
        # An isolated HOME keeps the developer's own registry logins out of it.
        env = {**os.environ, "HOME": str(layout), "XDG_RUNTIME_DIR": str(layout)}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"skopeo copy failed: {result.stderr.strip()}")
        return digest_file.read_text().strip()


def unique_name(prefix: str) -> str:
    """``prefix-<8 hex>``: a name no other test or run uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def copy_image(src: str, dst: str) -> None:
    """Copy an image between plain-HTTP registries with skopeo (blobs a registry has are not
    sent again): e.g. a local build under the name a published chart uses."""
    subprocess.run(
        [
            _tool("skopeo", "skopeo"),
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{src}",
            f"docker://{dst}",
        ],
        check=True,
        capture_output=True,
    )
