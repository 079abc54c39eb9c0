#!/usr/bin/env bash
# Keycloak for the SSO tests (tests/fixtures/keycloak.py): the Quarkus distribution from Maven
# Central, unpacked once per machine into the per-user cache beside the Go-built binaries.
# Prints the install directory. Idempotent: a warm machine only checks a marker file.
set -euo pipefail
VERSION="${KEYCLOAK_VERSION:-26.7.3}"
CACHE="${COURSEHUB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/coursehub}"
DEST="$CACHE/keycloak/keycloak-$VERSION"
if [ -f "$DEST/.installed" ]; then
  echo "$DEST"
  exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
# Maven fetches the distribution (it verifies Maven Central's checksums); a JDK runs it.
# Keycloak 26 needs Java 17 or newer: the machine's newer JDK is used when present (see
# tests/fixtures/keycloak.py), Debian's 17 otherwise.
need=()
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
work="$(mktemp -d "$CACHE/keycloak-dl.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE"; mktemp -d "$CACHE/keycloak-dl.XXXXXX"; })"
trap 'rm -rf "$work"' EXIT
# stdout stays for the path alone (Maven prints colour codes even when quiet).
mvn -q -B -Dstyle.color=never dependency:copy \
  "-Dartifact=org.keycloak:keycloak-quarkus-dist:$VERSION:tar.gz" \
  "-DoutputDirectory=$work" >&2
tar -xzf "$work/keycloak-quarkus-dist-$VERSION.tar.gz" -C "$work"
test -x "$work/keycloak-$VERSION/bin/kc.sh"
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST"
# Unpacked beside the cache, then renamed: a half install never looks installed.
mv "$work/keycloak-$VERSION" "$DEST"
touch "$DEST/.installed"
echo "$DEST"
