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

GATEWAY_NAME = "coursehub-gateway"
HTTP_PORT = 4180
METRICS_PORT = 44180
# The oauth2-proxy image runs as this non-root user (distroless "nonroot").
RUN_AS = 65532
SECRET_HASH_ANNOTATION = "coursehub.dev/gateway-secret-hash"

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
    oidc = spec.gateway.oidc  # type: ignore[union-attr]
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
    ]
    for domain_ in oidc.email_domains or ["*"]:
        args.append(f"--email-domain={domain_}")
    for group in oidc.allowed_groups or []:
        args.append(f"--allowed-group={group}")
    return args


def gateway_objects(
    name: str, namespace: str, spec: JupyterHubDeploymentSpec, domain: str, *, secret_hash: str | None = None
) -> list[dict]:
    """The gate's Deployment and Service, or [] when the spec has no OIDC gateway.

    `secret_hash` (of the gateway Secret's keys) goes into a pod annotation so a rotated
    client or cookie secret rolls the gate, which reads them only at start.
    """
    if not (spec.gateway and spec.gateway.oidc):
        return []
    oidc = spec.gateway.oidc
    labels = gateway_labels(name)
    selector = gateway_selector(name)
    pod_annotations = {SECRET_HASH_ANNOTATION: secret_hash} if secret_hash else {}
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
    return [deployment, service]
