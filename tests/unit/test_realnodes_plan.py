"""The real-node plan (dev/coursehub_dev/realnodes.py): names, addresses and limits."""

from __future__ import annotations

import ipaddress

import pytest

from coursehub_dev.realnodes import CLUSTER_CIDR, MAX_NODES, NODE_NET, plan


def test_one_node_is_a_plain_node():
    (node,) = plan(1)
    assert (node.name, node.gpu) == ("real-node-0", False)


def test_the_last_of_several_nodes_is_the_gpu_node():
    nodes = plan(3)
    assert [(n.name, n.gpu) for n in nodes] == [
        ("real-node-0", False),
        ("real-node-1", False),
        ("real-gpu-0", True),
    ]


@pytest.mark.parametrize("count", [0, -1, MAX_NODES + 1])
def test_a_count_out_of_range_names_the_option(count):
    with pytest.raises(ValueError, match="--real-nodes must be between 1 and"):
        plan(count)


def test_every_node_gets_its_own_ip_cidr_bridges_and_cgroup_root():
    nodes = plan(MAX_NODES)
    for attr in ("ip", "pod_cidr", "node_bridge", "pod_bridge", "cgroup_root"):
        values = [getattr(n, attr) for n in nodes]
        assert len(set(values)) == len(values), attr
    for n in nodes:
        assert ipaddress.ip_address(n.ip) in NODE_NET
        assert ipaddress.ip_network(n.pod_cidr).subnet_of(CLUSTER_CIDR)
        # Linux link names have at most 15 characters.
        assert len(n.node_bridge) <= 15 and len(n.pod_bridge) <= 15
