"""free_port: a port that nothing listens on, never one an outbound connection may take."""

from __future__ import annotations

import socket

from coursehub_dev.waiting import ephemeral_ports, free_port


def test_free_ports_are_bindable_and_outside_the_ephemeral_range():
    # A port from the ephemeral range can become the local end of any outbound connection
    # between free_port() and the server's bind (a bench's etcd: "address already in use").
    low, high = ephemeral_ports()
    for _ in range(50):
        port = free_port()
        assert not low <= port <= high, (port, low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_a_port_someone_listens_on_is_never_handed_out():
    taken = []
    try:
        for _ in range(20):
            port = free_port()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", port))
            s.listen()
            taken.append(s)
        ports = {s.getsockname()[1] for s in taken}
        assert len(ports) == 20
        for _ in range(200):
            assert free_port() not in ports
    finally:
        for s in taken:
            s.close()
