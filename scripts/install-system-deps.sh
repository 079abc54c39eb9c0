#!/usr/bin/env bash
# Debian packages the tests need: a real OCI registry, skopeo, PostgreSQL for JupyterHub;
# for real nodes (docs/real-nodes.md): containerd, runc, the CNI plugins, and mmdebstrap,
# buildah and a static C toolchain to build every image here.
set -euo pipefail
PACKAGES=(docker-registry skopeo postgresql apache2-utils
  containerd runc containernetworking-plugins iptables nftables iproute2 mmdebstrap buildah gcc libc6-dev)
# pip: scripts/bootstrap-uv.sh installs uv with it when uv is missing; libpq-dev: psycopg2 builds
# from source in the hub image's package set (tests/hub-image-requirements.txt, make test-hub).
PACKAGES+=(python3-pip libpq-dev)
# The learner in the browser tests (docs/testing.md): headless Chromium and its WebDriver.
PACKAGES+=(chromium chromium-driver)
# Private course repositories over ssh (docs/builds.md): the operator polls with ssh, the tests
# serve git over their own sshd (tests/fixtures/git_ssh_server.py, its own config and port).
PACKAGES+=(openssh-client openssh-server)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The Debian packages start system services; the tests run their own instances.
  $SUDO systemctl disable --now docker-registry postgresql containerd >/dev/null 2>&1 || true
  # Only an sshd this script installed: never a machine's own ssh service (it may be how you got in).
  if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
    $SUDO systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
  fi
fi
