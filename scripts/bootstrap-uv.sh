#!/usr/bin/env bash
# Put uv on PATH if it is not there: the pinned version, `pip install --user` into ~/.local/bin
# (the Makefile and .ci/run put that directory on PATH). A uv already on PATH is kept.
set -euo pipefail
UV_VERSION="${UV_VERSION:-0.13.9}"
export PATH="$HOME/.local/bin:$PATH"
if command -v uv >/dev/null 2>&1 && uv --version >/dev/null 2>&1; then
  exit 0
fi
# The interpreter under any activated virtualenv: venvs made by uv have no pip, their base does.
py="$(python3 -c 'import os, sys; print(os.path.join(sys.base_prefix, "bin", "python3"))')"
if ! "$py" -m pip --version >/dev/null 2>&1; then
  echo "error: uv is not installed and $py has no pip to install it with." >&2
  echo "       Install python3-pip (Debian: apt-get install python3-pip) or uv itself, then run make again." >&2
  exit 1
fi
args=(install --user --ignore-installed --quiet --disable-pip-version-check "uv==$UV_VERSION")
# Debian's python3 refuses pip installs outside a venv (PEP 668); a --user install of this one
# tool leaves the system's packages alone.
stdlib="$("$py" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"
[ -f "$stdlib/EXTERNALLY-MANAGED" ] && args+=(--break-system-packages)
echo "== installing uv $UV_VERSION with $py -m pip --user"
"$py" -m pip "${args[@]}"
command -v uv >/dev/null 2>&1 || {
  echo "error: pip installed uv, but not into $HOME/.local/bin; put its scripts directory on PATH." >&2
  exit 1
}
