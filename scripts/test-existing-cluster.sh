#!/usr/bin/env bash
# `make test-existing-cluster`: the e2e suite pointed at a cluster it did not start, as a user's
# kind cluster would be used (docs/kind.md). There is no Docker engine here, so each "existing"
# cluster is a `coursehub-dev up` started as a separate process; the tests get only its
# kubeconfig and, for real nodes, an images file of what a user knows (the registry, the
# operator image, the course images), never its state dir. Each is torn down also when a test
# fails. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_RUN="uv run --frozen"
work="$(mktemp -d /tmp/coursehub-existing.XXXXXX)"
state=""
down() {
  if [ -n "$state" ]; then $UV_RUN coursehub-dev down --state-dir "$state" || true; fi
  state=""
}
trap 'down; rm -rf "$work"' EXIT
started=$(date +%s)

# 1. kwok level: a cluster with kwok's nodes only (a kind cluster's workers would take the
#    pre-pullers' pods too; docs/kind.md). Also shows the own_control_plane skip.
state="$work/kwok"
$UV_RUN coursehub-dev up --state-dir "$state"
cp "$state/kubeconfig" "$work/kwok.kubeconfig"
COURSEHUB_E2E_KUBECONFIG="$work/kwok.kubeconfig" $UV_RUN pytest -p no:cacheprovider -rs "$@" \
  "tests/e2e/test_course_flow.py::test_resolve_publish_prepull_and_follow_tag" \
  "tests/e2e/test_faults.py::test_apiserver_outage_operator_reconnects"
down
echo "== kwok level done at $(( $(date +%s) - started ))s"

# 2. real node: the operator installed by its chart, a z2jh hub, a launch link to JupyterLab.
state="$work/real"
$UV_RUN coursehub-dev up --real-nodes 1 --state-dir "$state"
cp "$state/kubeconfig" "$work/real.kubeconfig"
$UV_RUN python - "$state/realnodes/images.json" "$work/images.json" <<'PY'
import json, sys
refs = json.load(open(sys.argv[1]))
keep = {k: v for k, v in refs.items() if k in ("registry", "operator") or k.startswith("course-")}
json.dump(keep, open(sys.argv[2], "w"), indent=1)
PY
COURSEHUB_E2E_KUBECONFIG="$work/real.kubeconfig" COURSEHUB_E2E_IMAGES="$work/images.json" \
  $UV_RUN pytest -p no:cacheprovider -rs "$@" \
    "tests/e2e/test_real_hub.py::test_launch_link_opens_jupyterlab_on_a_real_pod_that_pulled_nothing"
down
echo "== test-existing-cluster done in $(( $(date +%s) - started ))s"
