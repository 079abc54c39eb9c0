"""Cluster DNS for real nodes: `<service>.<namespace>.svc.cluster.local` -> the Service's IP.

z2jh's pods find each other by Service name (the proxy's default target `http://hub:8081`,
the hub's `http://proxy-api:8001`, user servers' `JUPYTERHUB_API_URL`), so pods need
cluster DNS. This is the smallest one that serves: A records for Services (ClusterIP, or
the ready endpoint addresses of a headless one), looked up in the API server on each query,
so it is never stale. Every other name is NXDOMAIN: nothing a pod resolves leads off the
machine. UDP only (answers are small). Run by realnodes.py on the host bridge address:

    python -m coursehub_dev.clusterdns <address> <api server url> <pki dir>
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import struct
import sys
import urllib.error
import urllib.request
from pathlib import Path

DOMAIN = "svc.cluster.local"
TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
NOERROR, FORMERR, NXDOMAIN = 0, 1, 3
TTL = 5


def parse_query(data: bytes) -> tuple[int, int, str, int, bytes]:
    """(id, flags, name, qtype, the question section's bytes) of a DNS query."""
    qid, flags, qdcount = struct.unpack("!HHH", data[:6])
    if qdcount != 1:
        raise ValueError("one question expected")
    pos, labels = 12, []
    while True:
        n = data[pos]
        if n == 0:
            pos += 1
            break
        if n & 0xC0:
            raise ValueError("compressed question")
        labels.append(data[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    qtype, _qclass = struct.unpack("!HH", data[pos : pos + 4])
    return qid, flags, ".".join(labels).lower(), qtype, data[12 : pos + 4]


def answer(qid: int, flags: int, question: bytes, rcode: int, ips: list[str]) -> bytes:
    """A response: authoritative, recursion available (so resolvers accept it), A records."""
    rd = flags & 0x0100
    header = struct.pack("!HHHHHH", qid, 0x8400 | rd | 0x0080 | rcode, 1, len(ips), 0, 0)
    records = b"".join(
        struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL, 4) + ipaddress.IPv4Address(ip).packed
        for ip in ips
    )
    return header + question + records


def service_name(name: str) -> tuple[str, str] | None:
    """(namespace, service) for `<service>.<namespace>.svc.cluster.local`, else None."""
    if not name.endswith("." + DOMAIN):
        return None
    parts = name[: -len(DOMAIN) - 1].split(".")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[1], parts[0]


class ApiLookup:
    def __init__(self, server: str, pki: Path) -> None:
        self.server = server
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def _get(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(self.server + path, context=self.ctx, timeout=3) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def addresses(self, namespace: str, service: str) -> list[str] | None:
        """The Service's A records; None when there is no such Service."""
        svc = self._get(f"/api/v1/namespaces/{namespace}/services/{service}")
        if svc is None:
            return None
        ip = svc["spec"].get("clusterIP")
        if ip and ip != "None":
            return [ip]
        eps = self._get(f"/api/v1/namespaces/{namespace}/endpoints/{service}") or {}
        return [a["ip"] for s in eps.get("subsets") or [] for a in s.get("addresses") or []]


def handle(data: bytes, lookup: ApiLookup) -> bytes | None:
    try:
        qid, flags, name, qtype, question = parse_query(data)
    except (ValueError, IndexError, struct.error):
        return None
    target = service_name(name)
    if target is None:
        return answer(qid, flags, question, NXDOMAIN, [])
    try:
        ips = lookup.addresses(*target)
    except Exception:
        return answer(qid, flags, question, 2, [])  # SERVFAIL: the API server did not answer
    if ips is None:
        return answer(qid, flags, question, NXDOMAIN, [])
    return answer(qid, flags, question, NOERROR, ips if qtype == TYPE_A else [])


def serve(address: str, server: str, pki: Path) -> None:
    lookup = ApiLookup(server, pki)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    print(f"[clusterdns] serving {DOMAIN} on {address}:53 from {server}", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        reply = handle(data, lookup)
        if reply is not None:
            sock.sendto(reply, peer)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
