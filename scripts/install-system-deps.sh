#!/usr/bin/env bash
# Debian packages the tests need: a real OCI registry, skopeo, PostgreSQL for JupyterHub.
set -euo pipefail
PACKAGES=(docker-registry skopeo postgresql apache2-utils)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The Debian packages start system services; the tests run their own instances.
  $SUDO systemctl disable --now docker-registry postgresql >/dev/null 2>&1 || true
fi
