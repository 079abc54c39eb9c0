"""The resolver's network rules through a real operator (issue 12, item 1): what a course author
sees in status and Events when spec.image points at an internal address, or at a registry that
sends the operator to an internal token service or answers with an internal page.

The operator runs as the e2e fixture configures it: COURSEHUB_INSECURE_REGISTRIES=127.0.0.1,
nothing else. 127.0.0.2 and 127.0.0.3 stand for internal addresses nobody configured.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from coursehub_dev.samples import course_manifest
from fixtures.cluster import get_yaml, wait_until

pytestmark = pytest.mark.e2e

SECRET = "INTERNAL-SECRET-7d2e"


class Recorder:
    """A plain-HTTP server on ``address`` answering with ``respond(path) -> (status, headers, body)``."""

    def __init__(self, address: str, respond: Callable[[str], tuple[int, dict[str, str], bytes]]) -> None:
        self.paths: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                recorder.paths.append(self.path)
                status, headers, body = respond(self.path)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = _answer

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.host = f"{address}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[..., Recorder]]:
    started: list[Recorder] = []

    def start(address: str, respond) -> Recorder:
        started.append(Recorder(address, respond))
        return started[-1]

    yield start
    for s in started:
        s.close()


def resolved_condition(cluster, ns: str, name: str) -> dict:
    obj = get_yaml(cluster, "courseimage", name, "-n", ns)
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == "ImageResolved" and c["status"] == "False" and c["reason"] != "Resolving":
            return c
    return {}


def test_internal_targets_are_refused_and_answers_never_shown(cluster, namespace, operator_factory, servers):
    internal = servers(
        "127.0.0.3",
        lambda path: (200, {"Content-Type": "application/json"}, json.dumps({"token": SECRET}).encode()),
    )
    unconfigured = servers("127.0.0.2", lambda path: (200, {}, SECRET.encode()))
    challenge = {"WWW-Authenticate": f'Bearer realm="http://{internal.host}/latest/meta-data",service="x"'}

    def hostile(path: str) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/v2/realm/"):
            return 401, challenge, b""
        return 500, {"Content-Type": "text/html"}, f"<h1>{SECRET}</h1>".encode()

    configured = servers("127.0.0.1", hostile)  # on the configured loopback host, but hostile

    operator_factory([namespace])
    cases = {
        "unconfigured": (f"{unconfigured.host}/x:1", "RegistryNotAllowed"),
        "realm": (f"{configured.host}/realm:1", "RegistryNotAllowed"),
        "body": (f"{configured.host}/body:1", "RegistryError"),
    }
    docs = [course_manifest(name, name, image) for name, (image, _) in cases.items()]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))

    for name, (_, reason) in cases.items():
        c = wait_until(lambda name=name: resolved_condition(cluster, namespace, name), what=f"{name} refused")
        assert c["reason"] == reason, c
        assert SECRET not in c["message"]
    assert "HTTP 500" in resolved_condition(cluster, namespace, "body")["message"]
    assert unconfigured.paths == [] and internal.paths == []  # nothing was sent there

    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    assert any(e["involvedObject"]["name"] == "realm" for e in events)
    assert not [e["message"] for e in events if SECRET in (e.get("message") or "")]
