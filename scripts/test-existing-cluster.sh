#!/usr/bin/env bash
# `make test-existing-cluster`: the e2e suite pointed at a cluster it did not start, as a user's
# kind cluster would be used (docs/kind.md). There is no Docker engine here, so the "existing"
# cluster is `coursehub-dev up --real-nodes 1` started as a separate process; the tests get
# only its kubeconfig and an images file of what a user would know (the registry, the operator
# image, the course images), never its state dir. It is torn down also when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_RUN="uv run --frozen"
work="$(mktemp -d /tmp/coursehub-existing.XXXXXX)"
state="$work/state"
down() {
  $UV_RUN coursehub-dev down --state-dir "$state" || true
  rm -rf "$work"
}
trap down EXIT
started=$(date +%s)
$UV_RUN coursehub-dev up --real-nodes 1 --state-dir "$state"
# What a user of an existing cluster knows: the kubeconfig, and the images pushed for it.
cp "$state/kubeconfig" "$work/kubeconfig"
$UV_RUN python - "$state/realnodes/images.json" "$work/images.json" <<'PY'
import json, sys
refs = json.load(open(sys.argv[1]))
keep = {k: v for k, v in refs.items() if k in ("registry", "operator") or k.startswith("course-")}
json.dump(keep, open(sys.argv[2], "w"), indent=1)
PY
echo "== up in $(( $(date +%s) - started ))s; the suite against $work/kubeconfig"
COURSEHUB_E2E_KUBECONFIG="$work/kubeconfig" COURSEHUB_E2E_IMAGES="$work/images.json" \
  $UV_RUN pytest -p no:cacheprovider "$@" \
    "tests/e2e/test_real_hub.py::test_launch_link_opens_jupyterlab_on_a_real_pod_that_pulled_nothing" \
    "tests/e2e/test_course_flow.py::test_resolve_publish_prepull_and_follow_tag" \
    "tests/e2e/test_faults.py::test_apiserver_outage_operator_reconnects"
echo "== test-existing-cluster done in $(( $(date +%s) - started ))s"
