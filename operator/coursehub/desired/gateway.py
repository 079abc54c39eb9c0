"""Pure: the SSO gate in front of a hub (oauth2-proxy, keycloak-oidc provider).

Learners reach `https://<domain>` through the cluster's ingress, which routes to the
`coursehub-gateway` Service; oauth2-proxy sends them to Keycloak, then forwards to z2jh's
`proxy-public` Service (ClusterIP when a gate exists, so the gate cannot be bypassed from
outside the cluster). Client id, client secret and cookie secret stay in the referenced
Secret and reach the container only as secretKeyRef environment variables.

Owner references are added by the caller when it applies these objects.
"""

from __future__ import annotations

from ..api.jupyterhubdeployment import JupyterHubDeploymentSpec
from .values_schema import InvalidValues

GATEWAY_NAME = "coursehub-gateway"
HTTP_PORT = 4180
METRICS_PORT = 44180
# The oauth2-proxy image runs as this non-root user (distroless "nonroot").
RUN_AS = 65532
# On the gate's pods: a stamp of the gateway Secret's version (desired/secrets.py), never of its content.
SECRET_VERSION_ANNOTATION = "coursehub.dev/secret-version"
NETWORK_POLICY_NAME = "coursehub-gateway-only"
# z2jh's labels on the proxy pods (chp) and on pods allowed to reach the proxy's API port.
Z2JH_PROXY_LABELS = {"app": "jupyterhub", "component": "proxy"}
Z2JH_PROXY_API_ACCESS = {"hub.jupyter.org/network-access-proxy-api": "true"}
Z2JH_PROXY_HTTP_PORT = 8000
Z2JH_PROXY_API_PORT = 8001

_ENV_FROM_SECRET = (
    ("OAUTH2_PROXY_CLIENT_ID", "client_id"),
    ("OAUTH2_PROXY_CLIENT_SECRET", "client_secret"),
    ("OAUTH2_PROXY_COOKIE_SECRET", "cookie_secret"),
)


def gateway_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "oauth2-proxy",
        "app.kubernetes.io/component": "gateway",
        "app.kubernetes.io/managed-by": "coursehub",
        "coursehub.dev/hub": name,
    }


def gateway_selector(name: str) -> dict[str, str]:
    # Deployment selectors are immutable: only labels that can never change go here.
    return {"app.kubernetes.io/name": "oauth2-proxy", "coursehub.dev/hub": name}


def upstream_url(namespace: str) -> str:
    return f"http://proxy-public.{namespace}.svc.cluster.local"


def _args(namespace: str, spec: JupyterHubDeploymentSpec, domain: str) -> list[str]:
    oidc = spec.gateway.oidc if spec.gateway else None
    assert oidc is not None
    args = [
        "--provider=keycloak-oidc",
        f"--oidc-issuer-url={oidc.issuer_url}",
        f"--upstream={upstream_url(namespace)}",
        f"--http-address=0.0.0.0:{HTTP_PORT}",
        f"--metrics-address=0.0.0.0:{METRICS_PORT}",
        f"--redirect-url=https://{domain}/oauth2/callback",
        # Behind the cluster ingress: trust X-Forwarded-* for the original scheme and host.
        "--reverse-proxy=true",
        "--cookie-secure=true",
        "--code-challenge-method=S256",
        # One IdP: go straight to Keycloak instead of showing a "sign in with" page.
        "--skip-provider-button=true",
        # Notebook kernels talk over websockets.
        "--proxy-websockets=true",
        "--silence-ping-logging=true",
        f"--scope={oidc.scope}",
        # Sessions are checked against the issuer this often (a disabled account is locked out).
        f"--cookie-refresh={oidc.cookie_refresh_seconds}s",
        # Lax: the session cookie rides top-level navigations (a course link from the LMS), not
        # cross-site subrequests or form posts.
        "--cookie-samesite=lax",
    ]
    # Who passes is always explicit (check_gateway): "*" only when written, or when groups
    # restrict. oauth2-proxy refuses to start without an e-mail rule and checks it AND the
    # groups, so with groups alone "*" leaves the groups to decide.
    for domain_ in oidc.email_domains or ["*"]:
        args.append(f"--email-domain={domain_}")
    for group in oidc.allowed_groups or []:
        args.append(f"--allowed-group={group}")
    return args


def check_gateway(spec: JupyterHubDeploymentSpec) -> None:
    """Raise InvalidValues when the gate would admit anyone the issuer knows (a hub from an
    older CRD, which lacked the rule)."""
    oidc = spec.gateway.oidc if spec.gateway else None
    if oidc is not None and not (oidc.allowed_groups or oidc.email_domains):
        raise InvalidValues(
            "spec.gateway.oidc.allowedGroups",
            "spec.gateway.oidc needs allowedGroups or emailDomains: say who may pass the gate "
            "(emailDomains: ['*'] admits every account of the issuer)",
        )


def network_policy(name: str, namespace: str) -> dict:
    """proxy-public takes traffic only from the gate's pods (issue 12, item 4).

    z2jh's own proxy policy admits every pod on the http port by default; the values
    (desired/values.py) turn that off while a gate exists, and policies only add up, so
    together the proxy's http port is open to the gate alone. The hub keeps its API port.
    """
    proxy = {**Z2JH_PROXY_LABELS, "release": name}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NETWORK_POLICY_NAME, "namespace": namespace, "labels": gateway_labels(name)},
        "spec": {
            "podSelector": {"matchLabels": proxy},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": gateway_selector(name)}}],
                    "ports": [{"protocol": "TCP", "port": Z2JH_PROXY_HTTP_PORT}],
                },
                {
                    "from": [{"podSelector": {"matchLabels": dict(Z2JH_PROXY_API_ACCESS)}}],
                    "ports": [{"protocol": "TCP", "port": Z2JH_PROXY_API_PORT}],
                },
            ],
        },
    }


def gateway_objects(
    name: str,
    namespace: str,
    spec: JupyterHubDeploymentSpec,
    domain: str,
    *,
    secret_version: str | None = None,
) -> list[dict]:
    """The gate's Deployment, Service and NetworkPolicy, or [] when the spec has no OIDC gateway.

    `secret_version` (a stamp of the gateway Secret's uid and resourceVersion, see
    desired/secrets.py) goes into a pod annotation so a rotated client or cookie secret
    rolls the gate, which reads them only at start. Raises InvalidValues (check_gateway).
    """
    if not (spec.gateway and spec.gateway.oidc):
        return []
    check_gateway(spec)
    oidc = spec.gateway.oidc
    labels = gateway_labels(name)
    selector = gateway_selector(name)
    pod_annotations = {SECRET_VERSION_ANNOTATION: secret_version} if secret_version else {}
    env = [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": oidc.secret_ref.name, "key": key}}}
        for var, key in _ENV_FROM_SECRET
    ]
    container = {
        "name": "oauth2-proxy",
        "image": oidc.image,
        "args": _args(namespace, spec, domain),
        "env": env,
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/ping", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod_meta: dict = {"labels": dict(labels)}
    if pod_annotations:
        pod_meta["annotations"] = pod_annotations
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": GATEWAY_NAME, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            # Two replicas: the gate is the only way in. Sessions live in the cookie, so
            # any replica serves any learner.
            "replicas": 2,
            "selector": {"matchLabels": dict(selector)},
            "template": {
                "metadata": pod_meta,
                "spec": {
                    # The gate never talks to the Kubernetes API.
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": GATEWAY_NAME, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return [deployment, service, network_policy(name, namespace)]
