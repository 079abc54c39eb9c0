# coursehub: the two commands that matter are `make demo` and `make test`.
SHELL := /bin/bash
UV ?= uv
export PATH := $(HOME)/.local/bin:$(PATH)

.PHONY: deps demo demo-down test test-unit test-e2e crds docs bench dev-up dev-down

deps:
	bash scripts/install-system-deps.sh
	python3 -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
	$(UV) sync --frozen
	npm ci --no-audit --no-fund --silent
	$(UV) run coursehub dev build

# The operator in the foreground on the local control plane, with a sample hub and courses.
demo: deps
	$(UV) run python -m coursehub.devcluster.demo

demo-down:
	$(UV) run coursehub dev down

# The whole suite: unit tests, then everything on real parts (control plane, helm, registry,
# moto's ECR, JupyterHub with PostgreSQL).
test:
	$(UV) run pytest -p no:cacheprovider

test-unit:
	$(UV) run pytest tests/unit

test-e2e:
	$(UV) run pytest tests/e2e tests/integration

crds:
	$(UV) run coursehub crds --write crds

docs:
	$(UV) run coursehub docs --write

dev-up:
	$(UV) run coursehub dev up

dev-down:
	$(UV) run coursehub dev down

bench:
	for b in bench/*.py; do echo "== $$b"; $(UV) run python $$b || exit 1; done
