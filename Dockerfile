# syntax=docker/dockerfile:1.7
# The coursehub operator image: `coursehub run` plus a pinned helm binary.
#
#   docker build -t coursehub-operator:dev .
#
# The base images are build arguments (PYTHON_IMAGE, GO_IMAGE, UV_IMAGE): the dev machine builds
# this file with buildah on images it made itself (coursehub_dev.images.ImageBuilder.operator,
# docs/real-nodes.md); elsewhere the defaults, public images, serve.
#
# Four stages; only the last one ships, and it holds no compiler, no Go toolchain, no uv
# and no build cache: the Python runtime, the locked virtualenv, helm, the puller's no-op and
# git with ssh (course builds poll repositories).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG GO_IMAGE=golang:1.25-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

# ---------------------------------------------------------------------------------------
# helm, built from its Go module at a pinned version.
#
# Why not the release tarball with a pinned sha256: the repository's tooling already
# builds helm this way (dev/coursehub_dev/build.py, HELM_VERSION), so the
# image runs the very helm the tests run; and the checksum below was recorded from the
# Go checksum database, not copied from a web page. Verification happens twice:
#   1. HELM_MODULE_SUM pins helm's own module zip (the h1: hash `go mod download`
#      reports); the build stops if the proxy serves anything else.
#   2. Every dependency is checked against the go.sum inside that verified module (and
#      against sum.golang.org, GOSUMDB's default), so no module can change underneath.
# Bumping helm: change HELM_VERSION here and in dev/coursehub_dev/build.py, then take the new
# sum from `go mod download -json helm.sh/helm/v3@<version>` (its "Sum" field).
FROM ${GO_IMAGE} AS helm
ARG HELM_VERSION=v3.19.0
ARG HELM_MODULE_SUM=h1:krVyCGa8fa/wzTZgqw0DUiXuRT5BPdeqE/sQXujQ22k=
ENV CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local
WORKDIR /src
RUN set -eu; \
    got="$(go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",*$/\1/p')"; \
    if [ "$got" != "$HELM_MODULE_SUM" ]; then \
      echo "helm.sh/helm/v3@${HELM_VERSION}: module sum $got, expected $HELM_MODULE_SUM" >&2; exit 1; \
    fi; \
    GOBIN=/out go install -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
      "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"; \
    /out/helm version --short

# ---------------------------------------------------------------------------------------
# The pre-puller's no-op (images/noop/noop.c): pullers copy it out of this image and run it
# in place of every course image's own programs. Linked statically, so it runs inside any
# image (any libc, or none, and no shell); the golang image already carries gcc and glibc's
# static libraries. The build stops if the result asks for a program interpreter.
FROM ${GO_IMAGE} AS noop
COPY images/noop/noop.c /src/noop.c
RUN set -eu; \
    mkdir -p /out; \
    gcc -static -Os -s -o /out/coursehub-noop /src/noop.c; \
    if readelf -l /out/coursehub-noop | grep -q INTERP; then echo "coursehub-noop is not static" >&2; exit 1; fi; \
    /out/coursehub-noop

# ---------------------------------------------------------------------------------------
# The locked Python dependencies and the coursehub package, in one virtualenv.
FROM ${UV_IMAGE} AS uv
FROM ${PYTHON_IMAGE} AS python-build
COPY --from=uv /uv /usr/local/bin/uv
# Byte-code is compiled here because the running container's filesystem is read-only;
# copy mode because the cache mount is not there at run time; never a downloaded Python,
# so the venv's interpreter is the base image's (the same in the final stage).
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies first, in their own layer: a source edit does not reinstall them. Bind targets
# are absolute (buildah requires it; the same files as relative targets under WORKDIR /app).
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=/app/uv.lock \
    --mount=type=bind,source=pyproject.toml,target=/app/pyproject.toml \
    uv sync --frozen --no-dev --no-install-project
COPY pyproject.toml uv.lock README.md ./
COPY operator ./operator
# --no-editable: the package is copied into the venv, so /app/operator is not needed later.
# --no-dev also leaves out the dev/ workspace member (coursehub_dev: dev cluster, registry, demo),
# which is reached only through the dev group and is not in the build context.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="coursehub-operator" \
      org.opencontainers.image.description="Kubernetes operator that runs JupyterHub for courses" \
      org.opencontainers.image.licenses="BSD-3-Clause"
# Course builds (docs/builds.md): the operator polls each course repository with
# `git ls-remote` (https, or ssh with a key Secret). Runtime tools only, no recommends.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git openssh-client >/dev/null \
 && rm -rf /var/lib/apt/lists/*
# A numeric, non-root user (65532, distroless' "nonroot"), so runAsNonRoot can verify it.
RUN groupadd --system --gid 65532 coursehub \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin coursehub
COPY --from=python-build /app/.venv /app/.venv
COPY --from=helm /out/helm /usr/local/bin/helm
# The puller's trusted init container copies this out (coursehub.desired.puller.NOOP_IN_OPERATOR_IMAGE).
COPY --from=noop /out/coursehub-noop /usr/local/bin/coursehub-noop
# helm writes its repository cache and config under HOME/XDG dirs; the root filesystem is
# read-only at run time, so they live under /tmp (an emptyDir in the chart).
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HELM_CACHE_HOME=/tmp/helm/cache \
    HELM_CONFIG_HOME=/tmp/helm/config \
    HELM_DATA_HOME=/tmp/helm/data \
    COURSEHUB_HELM=/usr/local/bin/helm \
    COURSEHUB_METRICS_PORT=8000
WORKDIR /tmp
USER 65532:65532
# 8080: kopf's liveness endpoint (/healthz); 8000: Prometheus metrics (/metrics).
EXPOSE 8080 8000
ENTRYPOINT ["coursehub", "run"]
CMD ["--all-namespaces"]
