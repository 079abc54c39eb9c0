"""The leader's EndpointSlice (desired/leader_endpoint.py): what it says, and when it is written."""

from __future__ import annotations

import copy

import pytest

from coursehub.desired.leader_endpoint import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    leader_endpoint_slice,
    slice_name,
    slice_write,
)
from coursehub.settings import Settings


def desired(address: str = "10.0.0.7", port: int = 9443, identity: str = "op-1") -> dict:
    return leader_endpoint_slice(
        service="rel-coursehub-operator-webhook",
        namespace="ops",
        address=address,
        port=port,
        identity=identity,
    )


def as_stored(body: dict, rv: str = "41") -> dict:
    """The slice as the API server returns it: with fields it adds."""
    out = copy.deepcopy(body)
    out["metadata"].update(resourceVersion=rv, uid="u-1", generation=3, managedFields=[{"manager": "x"}])
    out["metadata"]["creationTimestamp"] = "2026-11-30T12:00:00Z"
    return out


def test_the_slice_joins_the_service_by_label_and_names_the_leaders_address_and_webhook_port():
    s = desired()
    assert s["apiVersion"] == "discovery.k8s.io/v1" and s["kind"] == "EndpointSlice"
    assert s["metadata"]["name"] == slice_name("rel-coursehub-operator-webhook")
    assert s["metadata"]["name"] == "rel-coursehub-operator-webhook-leader"  # the chart's Role names it
    assert s["metadata"]["namespace"] == "ops"
    labels = s["metadata"]["labels"]
    assert labels[SERVICE_NAME_LABEL] == "rel-coursehub-operator-webhook"
    # Not Kubernetes' own controllers' value: they leave this slice alone.
    assert labels[MANAGED_BY_LABEL] == MANAGED_BY != "endpointslice-controller.k8s.io"
    assert s["addressType"] == "IPv4"
    assert s["endpoints"] == [
        {"addresses": ["10.0.0.7"], "conditions": {"ready": True, "serving": True, "terminating": False}}
    ]
    # The port's name is the Service port's name: that is how a Service picks a slice's port.
    assert s["ports"] == [{"name": "webhook", "port": 9443, "protocol": "TCP"}]
    assert s["metadata"]["annotations"]["coursehub.dev/leader"] == "op-1"


def test_ipv6_pod_addresses_make_an_ipv6_slice_in_canonical_form():
    s = desired("FD00:0:0::0A")
    assert s["addressType"] == "IPv6" and s["endpoints"][0]["addresses"] == ["fd00::a"]


def test_a_pod_ip_that_is_no_address_is_refused_naming_the_setting_and_the_fix():
    with pytest.raises(ValueError, match=r"COURSEHUB_POD_IP 'pod-1' is not an IP address.*status\.podIP"):
        desired("pod-1")


@pytest.mark.parametrize("address", ["127.0.0.2", "::1", "169.254.1.1", "0.0.0.0", "224.0.0.1"])
def test_addresses_the_api_server_refuses_in_a_slice_are_refused_first(address):
    with pytest.raises(ValueError, match=r"may not name: set it to the pod's own IP"):
        desired(address)


def test_a_missing_slice_is_created():
    assert slice_write(None, desired()) == ("create", desired())


def test_an_unchanged_slice_is_not_written_again_whatever_the_server_added():
    # A leader renewing its Lease must write nothing else at rest (issue 16: 0 writes at rest).
    assert slice_write(as_stored(desired()), desired()) is None
    stored = as_stored(desired())
    stored["metadata"]["labels"]["team"] = "courses"  # a label of someone else's changes nothing
    assert slice_write(stored, desired()) is None


def test_a_slice_naming_the_former_leader_is_updated_with_the_read_resource_version():
    old = as_stored(desired("10.0.0.5", identity="op-0"), rv="77")
    old["metadata"]["labels"]["team"] = "courses"
    verb, body = slice_write(old, desired("10.0.0.7", identity="op-1"))
    assert verb == "update"
    # The resourceVersion read: a late write of a leader that lost the Lease meets a 409.
    assert body["metadata"]["resourceVersion"] == "77"
    assert body["endpoints"][0]["addresses"] == ["10.0.0.7"]
    assert body["metadata"]["annotations"]["coursehub.dev/leader"] == "op-1"
    assert body["metadata"]["labels"]["team"] == "courses"
    assert body["metadata"]["labels"][SERVICE_NAME_LABEL] == "rel-coursehub-operator-webhook"


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["ports"][0].update(port=8443),
        lambda s: s["ports"][0].update(name="http"),
        lambda s: s["endpoints"][0]["conditions"].update(ready=False),
        lambda s: s["endpoints"].clear(),
        lambda s: s["metadata"]["labels"].pop(SERVICE_NAME_LABEL),
    ],
    ids=["port", "port name", "not ready", "no endpoint", "detached from the Service"],
)
def test_any_change_to_where_the_service_routes_is_written_back(change):
    stored = as_stored(desired())
    change(stored)
    step = slice_write(stored, desired())
    assert step is not None and step[0] == "update"
    assert step[1]["ports"] == desired()["ports"] and step[1]["endpoints"] == desired()["endpoints"]


def test_a_slice_of_the_other_address_family_is_refused_with_the_fix():
    # addressType is immutable and the chart's Role has no delete: a person deletes it.
    stored = as_stored(desired("fd00::a"))
    with pytest.raises(ValueError, match=r"addressType IPv6 but COURSEHUB_POD_IP is IPv4: delete it"):
        slice_write(stored, desired())


def test_settings_require_the_pod_ip_when_the_leader_must_write_the_slice():
    base = {"leader_election": True, "webhook_port": 9443, "webhook_service": "svc"}
    with pytest.raises(ValueError, match=r"COURSEHUB_POD_IP is unset.*status\.podIP"):
        Settings(**base)
    with pytest.raises(ValueError, match=r"COURSEHUB_POD_IP '10.0.0' is not an IP address"):
        Settings(**base, pod_ip="10.0.0")
    assert Settings(**base, pod_ip="10.0.0.7").pod_ip == "10.0.0.7"
    # Without leader election (one pod, a Service with a selector) nothing is written: no IP needed.
    assert Settings(webhook_port=9443, webhook_service="svc").pod_ip is None
