"""Pure: the identity Helm uses for one hub, and the objects that give it its rights (issue 12, item 3).

As Flux's helm-controller does for multi-tenancy, every Helm action for a hub impersonates
a ServiceAccount of the hub's namespace. Its rights come from a RoleBinding, in that
namespace only, to the tenant ClusterRole that the operator's chart installs (the rules
are below, the chart renders the same list and a test keeps the two equal). So whatever a
chart renders into another namespace, or cluster-scoped, the API server refuses.

Why a ClusterRole bound per namespace rather than a Role the operator writes: RBAC lets
nobody create a Role granting more than they hold, so writing one would need the operator
itself to hold every tenant right (Secrets list/watch included) in every namespace, or
`escalate`. Binding needs only `bind` on this one ClusterRole, by name.

A hub may instead name its own ServiceAccount (spec.serviceAccountName), set up by the
namespace's administrator; the operator then creates nothing and impersonates that one,
if its chart allows it to (the impersonate rule lists ServiceAccount names).
"""

from __future__ import annotations

from .courses import HubRecord

# Defaults of the operator settings tenant_service_account and tenant_cluster_role.
DEFAULT_SERVICE_ACCOUNT = "coursehub-helm"
DEFAULT_CLUSTER_ROLE = "coursehub-tenant"

_CRUD = ["get", "list", "watch", "create", "update", "patch", "delete"]

# What Helm needs to install z2jh in one namespace. z2jh's hub Role grants the hub pods,
# PVCs, Secrets, Services (get/watch/list/create/delete) and Events (get/watch/list); RBAC
# lets Helm create that Role only if it holds those rights itself.
TENANT_RULES: list[dict] = [
    # Helm keeps each release revision in a Secret (create, list by label, update); z2jh
    # renders the hub Secret.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": _CRUD},
    {
        "apiGroups": [""],
        "resources": ["configmaps", "services", "serviceaccounts", "persistentvolumeclaims"],
        "verbs": _CRUD,
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": _CRUD},
    # helm --wait follows a Deployment's rollout through its ReplicaSets.
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": _CRUD},
    # z2jh's hub Role and RoleBinding. A RoleBinding to a ClusterRole needs `bind` or every
    # right of that role, so this cannot reach cluster-admin.
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": _CRUD},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies", "ingresses"], "verbs": _CRUD},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": _CRUD},
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"], "verbs": _CRUD},
]


def service_account_name(hub: HubRecord, default: str = DEFAULT_SERVICE_ACCOUNT) -> str:
    return hub.spec.service_account_name or default


def helm_user(hub: HubRecord, default: str = DEFAULT_SERVICE_ACCOUNT) -> str:
    """The user name Helm impersonates for this hub (`helm --kube-as-user`)."""
    return f"system:serviceaccount:{hub.namespace}:{service_account_name(hub, default)}"


def tenant_cluster_role(name: str = DEFAULT_CLUSTER_ROLE) -> dict:
    """The ClusterRole the chart installs (tests apply it to a bare control plane)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/part-of": "coursehub", "app.kubernetes.io/component": "tenant"},
        },
        "rules": [dict(r, verbs=list(r["verbs"])) for r in TENANT_RULES],
    }


def tenant_objects(
    hub: HubRecord,
    *,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    cluster_role: str = DEFAULT_CLUSTER_ROLE,
) -> list[dict]:
    """ServiceAccount and RoleBinding that Helm impersonates for this hub (applied, owned by the hub).

    [] when the hub names its own ServiceAccount: its rights are its administrator's business.
    """
    if hub.spec.service_account_name:
        return []
    labels = {"app.kubernetes.io/managed-by": "coursehub", "coursehub.dev/hub": hub.name}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": service_account, "namespace": hub.namespace, "labels": dict(labels)},
            # Only impersonated, never mounted into a pod.
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": service_account, "namespace": hub.namespace, "labels": dict(labels)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": hub.namespace}],
        },
    ]
