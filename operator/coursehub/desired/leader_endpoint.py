"""The leader's EndpointSlice: the webhook Service routes to the replica holding the Lease only.

The chart's webhook Service has no selector (a selector would send about half of all pushes to
a standby, which serves no webhooks). The leader names its own pod IP and webhook port in one
EndpointSlice labelled `kubernetes.io/service-name: <service>`, which kube-proxy (or any
Service implementation) joins to the Service like the slices Kubernetes writes itself. Pure:
leadership.Elector does the reads and writes (docs/scaling.md, docs/builds.md).
"""

from __future__ import annotations

import ipaddress

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
# Kubernetes' own controllers leave slices of other managers alone (a label value: no "/").
MANAGED_BY = "leader-election.coursehub.dev"
PORT_NAME = "webhook"  # the Service's port name: a slice port joins the Service port of that name


def slice_name(service: str) -> str:
    """The one slice the leader writes (the chart's Role may update this name only)."""
    return f"{service}-leader"


def address_type(address: str) -> str:
    """IPv4 or IPv6 for `address`, or ValueError naming COURSEHUB_POD_IP and the fix."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(
            f"COURSEHUB_POD_IP {address!r} is not an IP address: set it from the downward API "
            "(env valueFrom.fieldRef.fieldPath: status.podIP), as the chart does"
        ) from None
    # What the API server refuses in an EndpointSlice (ValidateEndpointIP), said before it does.
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        raise ValueError(
            f"COURSEHUB_POD_IP {address} is a loopback, link-local, unspecified or multicast address, "
            "which an EndpointSlice may not name: set it to the pod's own IP (downward API status.podIP)"
        )
    return "IPv4" if ip.version == 4 else "IPv6"


def leader_endpoint_slice(*, service: str, namespace: str, address: str, port: int, identity: str) -> dict:
    """The EndpointSlice sending `service`'s traffic to `address`:`port` (this leader's webhook)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(service),
            "namespace": namespace,
            "labels": {
                SERVICE_NAME_LABEL: service,
                MANAGED_BY_LABEL: MANAGED_BY,
                "app.kubernetes.io/managed-by": "coursehub",
            },
            # Which replica it names, for `kubectl describe` (the Lease's holderIdentity).
            "annotations": {"coursehub.dev/leader": identity},
        },
        "addressType": address_type(address),
        "endpoints": [
            {
                "addresses": [str(ipaddress.ip_address(address))],
                "conditions": {"ready": True, "serving": True, "terminating": False},
            }
        ],
        "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP"}],
    }


def _routing(obj: dict) -> tuple:
    """What decides where the Service's traffic goes (and who the slice says leads), nothing
    the API server adds (resourceVersion, generation, managedFields, defaults)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    endpoints = [
        (
            tuple(e.get("addresses") or ()),
            (e.get("conditions") or {}).get("ready"),
            (e.get("conditions") or {}).get("serving"),
            (e.get("conditions") or {}).get("terminating"),
        )
        for e in obj.get("endpoints") or ()
    ]
    ports = [(p.get("name"), p.get("port"), p.get("protocol", "TCP")) for p in obj.get("ports") or ()]
    return (
        labels.get(SERVICE_NAME_LABEL),
        labels.get(MANAGED_BY_LABEL),
        (meta.get("annotations") or {}).get("coursehub.dev/leader"),
        obj.get("addressType"),
        endpoints,
        ports,
    )


def slice_write(current: dict | None, desired: dict) -> tuple[str, dict] | None:
    """What to send for `desired` given the slice as read (None: it does not exist):
    ("create", body), ("update", body with the read resourceVersion), or None when it already
    routes as desired (no write: a leader renewing its Lease writes nothing else at rest).

    addressType is immutable: a slice of the other family is replaced by deleting it, which the
    chart's Role does not allow, so that case is a ValueError with the fix."""
    if current is None:
        return "create", desired
    if _routing(current) == _routing(desired):
        return None
    if current.get("addressType") != desired["addressType"]:
        name = desired["metadata"]["name"]
        raise ValueError(
            f"EndpointSlice {desired['metadata']['namespace']}/{name} has addressType "
            f"{current.get('addressType')} but COURSEHUB_POD_IP is {desired['addressType']}: delete it "
            f"(kubectl delete endpointslice -n {desired['metadata']['namespace']} {name}) and the leader "
            "writes it again"
        )
    meta = dict(desired["metadata"])
    meta["resourceVersion"] = (current.get("metadata") or {}).get("resourceVersion")
    # Labels and annotations someone else added are kept; ours win.
    meta["labels"] = {**((current.get("metadata") or {}).get("labels") or {}), **meta["labels"]}
    meta["annotations"] = {
        **((current.get("metadata") or {}).get("annotations") or {}),
        **meta["annotations"],
    }
    return "update", {**desired, "metadata": meta}


__all__ = [
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "PORT_NAME",
    "SERVICE_NAME_LABEL",
    "address_type",
    "leader_endpoint_slice",
    "slice_name",
    "slice_write",
]
