# coursehub: the two commands that matter are `make demo` and `make test`. Both work first on a
# fresh machine: they install what they need (`make deps`), uv included.
SHELL := /bin/bash
# scripts/bootstrap-uv.sh puts uv here (pip --user) when the machine has none.
export PATH := $(HOME)/.local/bin:$(PATH)
# The lock file is the truth: uv never re-resolves behind a command's back.
UV_RUN := uv run --frozen
# The code the hub image loads (operator/coursehub/hub) is tested again on the hub's Python,
# in a venv of the hub image's pinned packages (tests/hub-image-requirements.txt).
HUB_PYTHON_VERSION := 3.12
HUB_VENV := .venv-hub
HUB_TESTS := tests/unit/test_course_options.py

.PHONY: uv deps demo demo-down test test-unit test-e2e test-existing-cluster test-hub lint crds docs bench dev-up dev-down

uv:
	@bash scripts/bootstrap-uv.sh

deps:
	bash scripts/install-system-deps.sh
	@bash scripts/bootstrap-uv.sh
	uv sync --frozen
	@$(MAKE) --no-print-directory node_modules/.package-lock.json
	$(UV_RUN) coursehub-dev build
	@# Keycloak for the SSO tests (docs/sso.md), from Maven Central, cached per machine.
	bash scripts/install-keycloak.sh >/dev/null

# npm ci empties node_modules each time, so only when the lock is newer than the install.
node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund --silent

# One real node (root), the operator installed by its chart, the z2jh chart and the example
# courses built and published; prints a checked launch link per course and leaves it running.
# `make demo-down` stops it and restores the machine. Existing cluster: docs/kind.md.
demo: deps
	$(UV_RUN) coursehub-dev demo

demo-down: uv
	$(UV_RUN) coursehub-dev down

# The whole suite: the hub module on the hub's Python, then unit tests and everything on real
# parts (control plane, helm, registry, moto's ECR, JupyterHub with PostgreSQL).
test: deps test-hub
	$(UV_RUN) pytest -p no:cacheprovider
	@$(MAKE) --no-print-directory test-existing-cluster

# The e2e suite against a cluster it did not start, named only by its kubeconfig (and an images
# file): a separately started `coursehub-dev up --real-nodes 1`, as a user's kind cluster.
test-existing-cluster: uv $(HUB_VENV)/installed
	bash scripts/test-existing-cluster.sh

test-unit: uv
	$(UV_RUN) pytest tests/unit

# The host hub of the kwok tests runs z2jh's config on the hub venv (tests/fixtures/jupyterhub.py).
test-e2e: uv $(HUB_VENV)/installed
	$(UV_RUN) pytest tests/e2e tests/integration

# --noconftest: tests/conftest.py loads the cluster/registry fixtures, which need the operator's
# dependencies; the hub venv has only what the hub image has.
test-hub: $(HUB_VENV)/installed
	PYTHONPATH=operator $(HUB_VENV)/bin/python -m pytest -p no:cacheprovider --noconftest -q $(HUB_TESTS)

$(HUB_VENV)/installed: tests/hub-image-requirements.txt images/hub/requirements.txt scripts/find-python.sh
	@bash scripts/bootstrap-uv.sh
	py="$$(bash scripts/find-python.sh $(HUB_PYTHON_VERSION))" \
	  && rm -rf $(HUB_VENV) \
	  && UV_PYTHON_DOWNLOADS=never uv venv --quiet --python "$$py" $(HUB_VENV) \
	  && uv pip install --quiet --python $(HUB_VENV)/bin/python -r tests/hub-image-requirements.txt \
	  && touch $@

lint: uv
	$(UV_RUN) ruff check
	$(UV_RUN) ruff format --check
	$(UV_RUN) mypy

crds: uv
	$(UV_RUN) coursehub crds --write crds

docs: uv
	$(UV_RUN) coursehub docs --write

dev-up: uv
	$(UV_RUN) coursehub-dev up

dev-down: uv
	$(UV_RUN) coursehub-dev down

bench: uv
	for b in bench/bench_*.py; do echo "== $$b"; $(UV_RUN) python $$b || exit 1; done
