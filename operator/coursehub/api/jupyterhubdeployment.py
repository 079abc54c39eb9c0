"""The JupyterHubDeployment kind: one z2jh release with its database, gateway and courses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .common import (
    COURSE_SLUG_PATTERN,
    OBJECT_NAME_PATTERN,
    Condition,
    CpuResources,
    LabelSelector,
    MemoryResources,
    Model,
    SecretKeyRef,
    SecretRef,
)

KIND = "JupyterHubDeployment"
PLURAL = "jupyterhubdeployments"
SHORT_NAMES = ["jhd"]

DOMAIN_PATTERN = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# "key=value", as in ol.mit.edu/gpu_node=true
NODE_LABEL_PATTERN = (
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
    r"=([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
)
# "key=value:Effect" or "key:Effect" (operator Exists)
TOLERATION_PATTERN = (
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
    r"(=[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?:(NoSchedule|PreferNoSchedule|NoExecute)$"
)
CHART_VERSION_PATTERN = r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$"


class ChartSource(Model):
    """Where the z2jh chart comes from: a Helm repository, an OCI reference, or a local path."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.name) != has(self.path)",
                    "message": "spec.chart needs exactly one of 'name' (with 'repository', or an oci:// "
                    "reference) or 'path' "
                    "(a chart directory inside the operator's container)",
                },
                {
                    "rule": "!has(self.repository) || (has(self.name) && has(self.version))",
                    "message": "spec.chart.repository needs spec.chart.name and spec.chart.version "
                    "(e.g. jupyterhub, 4.4.1)",
                },
                {
                    "rule": "!has(self.name) || !self.name.startsWith('oci://') || !has(self.repository)",
                    "message": "spec.chart.name is an oci:// reference: remove spec.chart.repository",
                },
            ]
        }
    }

    repository: str | None = Field(
        None,
        description="A Helm chart repository URL, e.g. https://hub.jupyter.org/helm-chart/.",
        pattern=r"^(https?|file)://\S+$",
        max_length=512,
    )
    name: str | None = Field(
        None,
        description="The chart name in the repository (jupyterhub), or a full "
        "oci://host/path/jupyterhub reference.",
        pattern=r"^(oci://\S+|[a-z0-9][-a-z0-9]*)$",
        max_length=512,
    )
    version: str | None = Field(
        None,
        description="The chart version, e.g. 4.4.1. Pin it: an upgrade happens only "
        "when it or the rendered values change.",
        pattern=CHART_VERSION_PATTERN,
        max_length=64,
    )
    path: str | None = Field(
        None,
        description="A chart directory on the operator's filesystem (for air-gapped "
        "installs, demos and tests); a relative path is taken from the operator's working "
        "directory.",
        pattern=r"^[^\s]+$",
        max_length=1024,
    )


class SharedPassword(Model):
    secret_ref: SecretKeyRef = Field(description="The Secret key that holds the shared password.")


class Auth(Model):
    mode: Literal["tmp", "sharedPassword", "custom"] = Field(
        "tmp",
        description="'tmp': every visit gets a fresh temporary user (tmpauthenticator); needs a gateway in "
        "front unless allowUngated is true. 'sharedPassword': one password from a Secret. "
        "'custom': configure an "
        "authenticator yourself through spec.values.",
    )
    allow_ungated: bool = Field(
        False,
        description="Allow tmp auth without an SSO gateway: anyone who reaches the "
        "hub gets a server. Set it only on purpose (demos, internal networks).",
    )
    shared_password: SharedPassword | None = Field(
        None, description="For mode sharedPassword: where the password is."
    )


class Oidc(Model):
    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.allowedGroups) && size(self.allowedGroups) > 0) || "
                    "(has(self.emailDomains) && size(self.emailDomains) > 0)",
                    "message": "spec.gateway.oidc needs allowedGroups or emailDomains: say who may pass "
                    "the gate (emailDomains: ['*'] admits every account of the issuer)",
                },
            ]
        }
    }

    issuer_url: str = Field(
        description="The OIDC issuer, e.g. https://sso.example.edu/realms/olapps (Keycloak).",
        pattern=r"^https?://\S+$",
        max_length=512,
        alias="issuerURL",
    )
    secret_ref: SecretRef = Field(
        description="A Secret with keys client_id, client_secret and cookie_secret "
        "(kept by External Secrets or Vault; referenced, never copied)."
    )
    image: str = Field(
        "quay.io/oauth2-proxy/oauth2-proxy:v7.7.1",
        description="The oauth2-proxy image of the gate.",
        max_length=512,
    )
    allowed_groups: list[str] | None = Field(
        None,
        description="Only members of these groups pass the gate (the token's groups claim: add a "
        "group membership mapper to the Keycloak client). allowedGroups or emailDomains is required.",
        max_length=64,
    )
    email_domains: list[str] | None = Field(
        None,
        description="Only these e-mail domains pass. ['*'] admits every account of the issuer, and "
        "only when written explicitly. allowedGroups or emailDomains is required.",
        max_length=64,
    )
    scope: str = Field(
        "openid email profile",
        description="The OIDC scopes oauth2-proxy asks for (Keycloak refuses an unknown 'groups' scope; "
        "groups come from a mapper instead).",
        pattern=r"^[!-~]+( [!-~]+)*$",
        max_length=512,
    )
    cookie_refresh_seconds: int = Field(
        3600,
        ge=60,
        le=86400,
        description="oauth2-proxy refreshes the session against the issuer this often, so a disabled "
        "account or removed group is locked out within this time.",
    )


class GatewayTls(Model):
    secret_ref: SecretRef = Field(
        description="A kubernetes.io/tls Secret (keys tls.crt and tls.key) with a certificate for "
        "spec.domain (e.g. kept by cert-manager). Mounted read-only into the gate, never copied; a "
        "renewed certificate restarts the gate once."
    )


class Gateway(Model):
    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.tls) || has(self.oidc)",
                    "message": "spec.gateway.tls needs spec.gateway.oidc: the gate serves the TLS, and "
                    "there is no gate without oidc (remove spec.gateway.tls or add spec.gateway.oidc)",
                },
            ]
        }
    }

    oidc: Oidc | None = Field(
        None, description="An OIDC gate (oauth2-proxy, keycloak-oidc provider) in front of the hub."
    )
    node_selector: dict[str, str] | None = Field(
        None,
        description="Node labels the gate's pods must have (e.g. the ingress nodes). Unset: any node.",
        max_length=32,
    )
    tls: GatewayTls | None = Field(
        None,
        description="The gate serves https itself (port 443 of the coursehub-gateway Service) with this "
        "certificate, and no plain http. Unset: plain http on port 80, for an ingress that ends TLS.",
    )


class Database(Model):
    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                # type defaults to postgres, so an absent type counts as postgres.
                {
                    "rule": "(has(self.type) && self.type != 'postgres') || has(self.urlSecretRef)",
                    "message": "spec.database.urlSecretRef is required for type postgres: name the Secret "
                    "and key that hold "
                    "DATABASE_URL",
                },
            ]
        }
    }

    type: Literal["postgres", "sqlite-memory"] = Field(
        "postgres",
        description="'postgres' (production; URL from a Secret) or 'sqlite-memory' (demos: the hub "
        "forgets everything when it restarts).",
    )
    url_secret_ref: SecretKeyRef | None = Field(
        None,
        description="The Secret key holding the database URL "
        "(postgresql://...). The URL never appears in Helm values.",
    )


class Culling(Model):
    enabled: bool = Field(True, description="Cull idle servers.")
    timeout_seconds: int = Field(
        900, ge=60, le=31536000, description="Idle time after which a server is culled."
    )
    every_seconds: int = Field(300, ge=10, le=86400, description="How often the culler runs.")
    max_age_seconds: int = Field(
        14400, ge=0, le=31536000, description="Cull servers older than this even if active (0 disables)."
    )
    users: bool = Field(True, description="Also delete the (temporary) users whose servers were culled.")


class Courses(Model):
    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.namespaces) || self.namespaces != 'Selector' || "
                    "has(self.namespaceSelector)",
                    "message": "spec.courses.namespaceSelector is required when spec.courses.namespaces "
                    "is Selector",
                },
                {
                    "rule": "!has(self.onUnknown) || self.onUnknown != 'default' || has(self.default)",
                    "message": "spec.courses.onUnknown is 'default' but spec.courses.default names no course",
                },
            ]
        }
    }

    namespaces: Literal["Same", "All", "Selector"] = Field(
        "Same",
        description="Where this hub looks for CourseImages: its own namespace, all namespaces, or those "
        "matching namespaceSelector.",
    )
    namespace_selector: LabelSelector | None = Field(
        None, description="Namespaces to take CourseImages from (with namespaces: Selector)."
    )
    selector: LabelSelector | None = Field(
        None, description="A label selector over CourseImages; empty takes all."
    )
    default: str | None = Field(
        None,
        description="The course slug learners get when a link names no course, or "
        "an unknown one with onUnknown: default.",
        pattern=COURSE_SLUG_PATTERN,
        max_length=63,
    )
    on_unknown: Literal["default", "reject"] | None = Field(
        None,
        description="An unknown ?course=: 'default' starts the default course, 'reject' answers with a page "
        "saying the course is not offered. Unset: default when a default is set, else reject.",
    )


class PrePull(Model):
    enabled: bool = Field(True, description="Run coursehub's pre-puller DaemonSet for this hub's courses.")
    publish_after_pull: bool = Field(
        False,
        description="Offer a course (or its new digest) only once every node "
        "has pulled it; until then the previous digest stays published.",
    )
    pause_image: str = Field(
        "registry.k8s.io/pause:3.10", description="The image of the puller's final container.", max_length=512
    )


class GpuNodes(Model):
    label: str = Field(
        description="The node label of GPU nodes, key=value, e.g. ol.mit.edu/gpu_node=true.",
        pattern=NODE_LABEL_PATTERN,
        max_length=317,
    )
    toleration: str | None = Field(
        None,
        description="The taint GPU nodes carry, key=value:Effect, e.g. ol.mit.edu/gpu_node=true:NoSchedule.",
        pattern=TOLERATION_PATTERN,
        max_length=400,
    )
    resource: str = Field(
        "nvidia.com/gpu", description="The extended resource a GPU course asks one of.", max_length=253
    )


class Singleuser(Model):
    memory: MemoryResources | None = Field(
        None, description="Default memory for learners' servers (4G limit, 2G guarantee when unset)."
    )
    cpu: CpuResources | None = Field(
        None, description="Default CPU for learners' servers (0.25 guaranteed when unset)."
    )
    start_timeout_seconds: int = Field(
        600, ge=30, le=3600, description="How long a server may take to start."
    )
    gpu_nodes: GpuNodes | None = Field(None, description="Where GPU courses run.")


class Limits(Model):
    active_servers: int | None = Field(
        None,
        ge=0,
        le=100000,
        description="The most servers running or starting at once on this hub, all learners together; "
        "a launch beyond gets a page saying the hub is full. Unset: no hub-wide limit.",
    )
    servers_per_identity: int = Field(
        2,
        ge=0,
        le=100,
        description="The most servers one person (one SSO identity passed by spec.gateway) may run at "
        "once; a launch beyond gets a page linking the running ones instead of a new server. Applies "
        "only with spec.gateway.oidc: without a gateway the hub has no identity to count by.",
    )
    gpu_servers_per_identity: int = Field(
        1,
        ge=0,
        le=100,
        description="The most GPU servers one person may run at once (also counted in "
        "serversPerIdentity). Applies only with spec.gateway.oidc.",
    )


class JupyterHubDeploymentSpec(Model):
    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                # auth.mode defaults to tmp, so an absent auth block counts as tmp here.
                {
                    "rule": "(has(self.auth) && has(self.auth.mode) && self.auth.mode != 'tmp') || "
                    "(has(self.gateway) && has(self.gateway.oidc)) || "
                    "(has(self.auth) && has(self.auth.allowUngated) && self.auth.allowUngated)",
                    "message": "spec.auth.mode tmp gives every visitor a server: put an SSO gate in front "
                    "(spec.gateway.oidc) "
                    "or set spec.auth.allowUngated: true on purpose",
                },
                {
                    "rule": "!has(self.auth) || !has(self.auth.mode) || "
                    "self.auth.mode != 'sharedPassword' || "
                    "has(self.auth.sharedPassword)",
                    "message": "spec.auth.sharedPassword.secretRef is required for auth mode sharedPassword",
                },
            ]
        }
    }

    chart: ChartSource = Field(description="The Zero to JupyterHub chart to install.")
    domain: str = Field(
        description="The public host name of the hub, e.g. nb.learn.example.edu.",
        pattern=DOMAIN_PATTERN,
        max_length=253,
    )
    auth: Auth | None = Field(None, description="How learners log in (tmp by default).")
    gateway: Gateway | None = Field(None, description="The SSO gate in front of the hub.")
    database: Database = Field(description="The hub's database.")
    culling: Culling | None = Field(
        None,
        description="Idle culling of servers and temporary users (on by default: "
        "every 300 s, timeout 900 s, max age 14400 s, users culled).",
    )
    courses: Courses | None = Field(
        None, description="Which CourseImages this hub offers and what unknown courses get."
    )
    pre_pull: PrePull | None = Field(None, description="Pre-pulling of course images onto nodes.")
    singleuser: Singleuser | None = Field(None, description="Defaults for learners' servers.")
    limits: Limits | None = Field(
        None,
        description="How many servers may run: on the hub, per person, GPU servers per person "
        "(2 per person and 1 GPU server per person when unset). The hub reads them live, without a restart.",
    )
    values: dict[str, Any] | None = Field(
        None,
        description="Raw z2jh values merged last (an escape hatch). They "
        "are validated against the chart's schema before any upgrade. Refused: hub.image, "
        "privileged containers, hostPath volumes, hostNetwork/hostPID/hostIPC pods, and, with "
        "spec.gateway.oidc, the proxy's Service, https, traefik, NetworkPolicy, ingress and httpRoute.",
    )
    service_account_name: str | None = Field(
        None,
        description="A ServiceAccount of this namespace that Helm impersonates for this hub, set up "
        "(with its Role) by the namespace's administrator. Unset: the operator creates "
        "coursehub-helm, bound to the tenant ClusterRole (namespaced objects in this namespace only). "
        "The operator's chart must list the name (tenancy.serviceAccountNames).",
        pattern=OBJECT_NAME_PATTERN,
        max_length=253,
    )


class ReleaseStatus(Model):
    name: str | None = Field(None, description="The Helm release name.")
    revision: int | None = Field(None, description="The deployed Helm revision.")
    chart_version: str | None = Field(None, description="The deployed chart version.")
    values_hash: str | None = Field(
        None, description="A hash of the rendered values and chart last deployed."
    )


class JupyterHubDeploymentStatus(Model):
    observed_generation: int | None = Field(None, description="The generation this status was computed from.")
    url: str | None = Field(None, description="The hub's public URL.")
    release: ReleaseStatus | None = Field(None, description="The Helm release as last deployed.")
    courses: int | None = Field(None, description="How many courses the hub's allowlist publishes.")
    conditions: list[Condition] | None = Field(
        None,
        description="ReleaseDeployed, DatabaseReady, GatewayReady, CoursesPublished and the summary Ready.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


PRINTER_COLUMNS = [
    {"name": "Domain", "type": "string", "jsonPath": ".spec.domain", "description": "The hub's host name."},
    {
        "name": "Courses",
        "type": "integer",
        "jsonPath": ".status.courses",
        "description": "Published courses.",
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Whether the hub is serving its declared state.",
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Why it is (not) ready.",
    },
    {
        "name": "Revision",
        "type": "integer",
        "jsonPath": ".status.release.revision",
        "priority": 1,
        "description": "The Helm revision.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
