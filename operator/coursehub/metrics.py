"""Prometheus metrics of the operator (one home for every metric name)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("coursehub_reconciles_total", "Reconciles by kind and result.", ["kind", "result"])
RECONCILE_ERRORS = Counter(
    "coursehub_reconcile_errors_total", "Reconcile errors by kind and reason.", ["kind", "reason"]
)
RECONCILE_SECONDS = Histogram("coursehub_reconcile_duration_seconds", "Reconcile latency by kind.", ["kind"])
API_REQUESTS = Counter(
    "coursehub_kube_requests_total", "Kubernetes API requests by method and kind.", ["method", "kind"]
)
CREDENTIAL_RELOADS = Counter(
    "coursehub_kube_credential_reloads_total", "Kubernetes credentials loaded again after a 401."
)
REGISTRY_CALLS = Counter(
    "coursehub_registry_calls_total", "Image resolutions by registry type and result.", ["registry", "result"]
)
# Calls that reach a registry: an ECR describe_images call (one per up to 100 courses), an OCI
# resolution (a manifest HEAD, plus the token request of a bearer registry).
REGISTRY_REQUESTS = Counter(
    "coursehub_registry_requests_total", "Calls to registries by registry type.", ["registry"]
)
HELM_OPERATIONS = Counter(
    "coursehub_helm_operations_total", "Helm operations by operation and result.", ["operation", "result"]
)
HELM_SECONDS = Histogram("coursehub_helm_operation_seconds", "Helm operation durations.", ["operation"])
COURSES_PER_HUB = Gauge("coursehub_hub_courses", "Courses published per hub.", ["namespace", "hub"])
PREPULL_READY = Gauge(
    "coursehub_prepull_ready", "1 when every pre-puller of the hub is fully rolled out.", ["namespace", "hub"]
)
ECR_POLICY_PUTS = Counter(
    "coursehub_ecr_lifecycle_puts_total", "put_lifecycle_policy calls by result.", ["result"]
)
LEADER = Gauge(
    "coursehub_leader",
    "1 while this replica holds its shard's leader Lease (runs the reconcilers).",
    ["shard"],
)


def serve(port: int) -> None:
    start_http_server(port)
