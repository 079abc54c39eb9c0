"""Objects that confine what Helm may do for one hub (issue 12, item 3).

Helm actions for a hub impersonate a ServiceAccount of the hub's namespace whose Role allows
only namespaced objects there. This module returns those objects for the hub reconciler to
apply; the hardening work fills it in.
"""

from __future__ import annotations

from .courses import HubRecord


def tenant_objects(hub: HubRecord) -> list[dict]:
    """ServiceAccount, Role and RoleBinding that Helm impersonates for this hub (applied, owned by the hub)."""
    return []
