"""Pure: the hub's read access to its course allowlist (applied by the operator, outside the release)."""

from __future__ import annotations

MANAGED_BY = {"app.kubernetes.io/managed-by": "coursehub"}
DEFAULT_ALLOWLIST_CONFIGMAP = "coursehub-allowlist"
# z2jh names the hub's ServiceAccount "hub" unless hub.serviceAccount.name says otherwise.
DEFAULT_HUB_SERVICE_ACCOUNT = "hub"


def hub_service_account(values: dict) -> str:
    """The ServiceAccount the z2jh hub runs as, given the rendered values."""
    sa = (values.get("hub") or {}).get("serviceAccount") or {}
    return sa.get("name") or DEFAULT_HUB_SERVICE_ACCOUNT


def hub_allowlist_rbac(
    name: str,
    namespace: str,
    configmap: str = DEFAULT_ALLOWLIST_CONFIGMAP,
    *,
    service_account: str = DEFAULT_HUB_SERVICE_ACCOUNT,
) -> list[dict]:
    """A Role that lets the hub read exactly the allowlist ConfigMap, and its RoleBinding.

    Outside the z2jh release because the release must not change when courses do, and
    because z2jh's own hub Role has no place for it.
    """
    labels = {**MANAGED_BY, "coursehub.dev/hub": name}
    role_name = "coursehub-hub-allowlist"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": role_name, "namespace": namespace, "labels": dict(labels)},
            # list/watch with resourceNames work for a metadata.name field selector, which
            # is how the hub module watches the one ConfigMap.
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [configmap],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": role_name, "namespace": namespace, "labels": dict(labels)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
        },
    ]
