"""Pure: the SSO gate in front of a hub (oauth2-proxy, keycloak-oidc provider).

Learners reach `https://<domain>` through the cluster's ingress, which routes to the
`coursehub-gateway` Service; oauth2-proxy sends them to Keycloak, then forwards to z2jh's
`proxy-public` Service (ClusterIP when a gate exists, so the gate cannot be bypassed from
outside the cluster). Client id, client secret and cookie secret stay in the referenced
Secret and reach the container only as secretKeyRef environment variables.

Owner references are added by the caller when it applies these objects.
"""

from __future__ import annotations

import hashlib

from ..api.jupyterhubdeployment import JupyterHubDeploymentSpec
from .values_schema import InvalidValues

GATEWAY_NAME = "coursehub-gateway"
HTTP_PORT = 4180
# spec.gateway.tls: the gate serves https here (Service port 443) and no plain http.
HTTPS_PORT = 4443
TLS_DIR = "/etc/oauth2-proxy/tls"
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
# The gate's own pages (a readable refusal), mounted from this ConfigMap. Named with the gate's
# prefix so that hub_round keeps it with the gate when a Secret goes missing.
PAGES_NAME = "coursehub-gateway-pages"
PAGES_DIR = "/etc/oauth2-proxy/pages"
# On the gate's pods: a hash of the pages, since oauth2-proxy reads its templates only at start.
PAGES_ANNOTATION = "coursehub.dev/pages"
# The sign-out path learners follow; it ends the gate's cookie and the Keycloak session.
SIGN_OUT_PATH = "/oauth2/sign_out"
# A session lives at most this long without a new login (a teaching day), and at least one
# refresh period longer than the refresh period: oauth2-proxy refuses refresh >= expire.
COOKIE_EXPIRE_SECONDS = 12 * 3600
# The token claim the group membership mapper writes (docs/sso.md): the groups that pass.
GROUPS_CLAIM = "groups"

# oauth2-proxy's error template (Go html/template; fields per pkg/app/pagewriter). The stock
# page shows a bare "403 Forbidden" and hides the reason behind a toggle: learners sent here
# from a course page need to know whether it is their account or the service.
ERROR_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.StatusCode}} {{.Title}}</title>
<style>
body { font-family: sans-serif; max-width: 42rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5; }
h1 { font-size: 1.6rem; } .small { color: #555; font-size: 0.85rem; }
</style></head>
<body>
{{ if eq .StatusCode 403 }}
<h1 id="refused">This account may not use these notebooks</h1>
<p>You are signed in, but your account is not in a group that this course hub admits.
If you think it should be, ask your course staff to add you.</p>
<p><a id="sign-out" href="@@ISSUER_LOGOUT@@">Sign out of the sign-in service</a> to use another
account.</p>
{{ else if ge .StatusCode 500 }}
<h1 id="unavailable">Sign-in is not available right now</h1>
<p>The sign-in service or the notebook hub could not be reached. Notebooks that are already
running keep running. Please try again in a few minutes.</p>
{{ if .Redirect }}<p><a id="retry" href="{{.Redirect}}">Try again</a></p>{{ end }}
{{ else }}
<h1 id="not-signed-in">Sign-in did not complete</h1>
<p>Please open the course link again to sign in.</p>
{{ if .Redirect }}<p><a id="retry" href="{{.Redirect}}">Start again</a></p>{{ end }}
{{ end }}
<p class="small">Error {{.StatusCode}} {{.Title}}{{ if .RequestID }}, request {{.RequestID}}{{ end }}.
{{ if .Message }}Details: {{.Message}}{{ end }}</p>
</body></html>
"""

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


def cookie_expire_seconds(refresh_seconds: int) -> int:
    return max(COOKIE_EXPIRE_SECONDS, refresh_seconds + 3600)


def backend_logout_url(issuer_url: str) -> str:
    """Keycloak's end-session endpoint, which oauth2-proxy calls on sign-out with the session's
    ID token ({id_token} is oauth2-proxy's placeholder): without it a signed-out learner is
    signed straight back in by the still-open Keycloak session."""
    return f"{issuer_url.rstrip('/')}/protocol/openid-connect/logout?id_token_hint={{id_token}}"


def error_page(issuer_url: str) -> str:
    """ERROR_PAGE for this issuer. A refused account has no gate session, so the gate's own
    sign-out cannot end its Keycloak session: the link goes to Keycloak's logout page."""
    return ERROR_PAGE.replace("@@ISSUER_LOGOUT@@", f"{issuer_url.rstrip('/')}/protocol/openid-connect/logout")


def pages_hash(page: str) -> str:
    return "sha256:" + hashlib.sha256(page.encode()).hexdigest()[:32]


def _args(namespace: str, spec: JupyterHubDeploymentSpec, domain: str) -> list[str]:
    oidc = spec.gateway.oidc if spec.gateway else None
    assert oidc is not None
    args = [
        "--provider=keycloak-oidc",
        f"--oidc-issuer-url={oidc.issuer_url}",
        f"--upstream={upstream_url(namespace)}",
        *_listen_args(spec),
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
        # Explicit: with allowed groups and no scope, oauth2-proxy adds a `groups` scope, which
        # Keycloak refuses (invalid_scope) unless the realm defines one. Groups come from the
        # client's group membership mapper, in this claim.
        f"--scope={oidc.scope}",
        f"--oidc-groups-claim={GROUPS_CLAIM}",
        # The hub reads who is behind a launch from X-Forwarded-Email / -Preferred-Username /
        # -User (the per-identity limit, docs/hub-side.md). oauth2-proxy sets them from the
        # session and drops whatever a browser sent under those names.
        "--pass-user-headers=true",
        # Sessions are checked against the issuer this often (a disabled account is locked out).
        f"--cookie-refresh={oidc.cookie_refresh_seconds}s",
        f"--cookie-expire={cookie_expire_seconds(oidc.cookie_refresh_seconds)}s",
        # Sign-out (SIGN_OUT_PATH) ends the Keycloak session too.
        f"--backend-logout-url={backend_logout_url(oidc.issuer_url)}",
        # A refused account or an unreachable issuer gets a page that says which (ERROR_PAGE).
        f"--custom-templates-dir={PAGES_DIR}",
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


def _tls_secret(spec: JupyterHubDeploymentSpec) -> str | None:
    tls = spec.gateway.tls if spec.gateway else None
    return tls.secret_ref.name if tls else None


def _listen_args(spec: JupyterHubDeploymentSpec) -> list[str]:
    if _tls_secret(spec) is None:
        return [f"--http-address=0.0.0.0:{HTTP_PORT}"]
    # "-" turns the plain listener off: with Secure cookies, http would only leak the way in.
    return [
        "--http-address=-",
        f"--https-address=0.0.0.0:{HTTPS_PORT}",
        f"--tls-cert-file={TLS_DIR}/tls.crt",
        f"--tls-key-file={TLS_DIR}/tls.key",
        "--tls-min-version=TLS1.2",
    ]


def check_gateway(spec: JupyterHubDeploymentSpec) -> None:
    """Raise InvalidValues when the gate would admit anyone the issuer knows (a hub from an
    older CRD, which lacked the rule), or when TLS is asked of a gate that does not exist."""
    if spec.gateway and spec.gateway.tls and not spec.gateway.oidc:
        raise InvalidValues(
            "spec.gateway.tls",
            "spec.gateway.tls needs spec.gateway.oidc: the gate serves the TLS, and there is no gate "
            "without oidc (remove spec.gateway.tls or add spec.gateway.oidc)",
        )
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
    """The gate's Deployment, Service, NetworkPolicy and pages ConfigMap, or [] when the spec has
    no OIDC gateway.

    `secret_version` (a stamp of the gateway Secret's uid and resourceVersion, see
    desired/secrets.py) goes into a pod annotation so a rotated client or cookie secret
    rolls the gate, which reads them only at start. Raises InvalidValues (check_gateway).
    """
    check_gateway(spec)
    if not (spec.gateway and spec.gateway.oidc):
        return []
    oidc = spec.gateway.oidc
    labels = gateway_labels(name)
    selector = gateway_selector(name)
    page = error_page(oidc.issuer_url)
    pod_annotations = {PAGES_ANNOTATION: pages_hash(page)}
    if secret_version:
        pod_annotations[SECRET_VERSION_ANNOTATION] = secret_version
    env = [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": oidc.secret_ref.name, "key": key}}}
        for var, key in _ENV_FROM_SECRET
    ]
    tls_secret = _tls_secret(spec)
    # With TLS the gate listens only on https: probes and the Service go there.
    port_name, port, scheme, service_port = (
        ("https", HTTPS_PORT, "HTTPS", 443) if tls_secret else ("http", HTTP_PORT, "HTTP", 80)
    )
    mounts = [{"name": "pages", "mountPath": PAGES_DIR, "readOnly": True}]
    volumes: list[dict] = [{"name": "pages", "configMap": {"name": PAGES_NAME}}]
    if tls_secret:
        # Mounted from the referenced Secret (never copied); only the two files oauth2-proxy reads.
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append(
            {
                "name": "tls",
                "secret": {
                    "secretName": tls_secret,
                    "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
                    "defaultMode": 0o440,
                },
            }
        )
    container = {
        "name": "oauth2-proxy",
        "image": oidc.image,
        "args": _args(namespace, spec, domain),
        "env": env,
        "ports": [
            {"name": port_name, "containerPort": port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/ping", "port": port_name, "scheme": scheme},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": port_name, "scheme": scheme},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "volumeMounts": mounts,
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
    pod_meta: dict = {"labels": dict(labels), "annotations": pod_annotations}
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
                    "volumes": volumes,
                    **(
                        {"nodeSelector": dict(spec.gateway.node_selector)}
                        if spec.gateway.node_selector
                        else {}
                    ),
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
            "ports": [{"name": port_name, "port": service_port, "targetPort": port_name, "protocol": "TCP"}],
        },
    }
    pages = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": PAGES_NAME, "namespace": namespace, "labels": dict(labels)},
        "data": {"error.html": page},
    }
    return [deployment, service, network_policy(name, namespace), pages]
