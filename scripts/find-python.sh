#!/usr/bin/env bash
# Print the path of an installed CPython X.Y (`find-python.sh 3.12`), or fail saying how to get one.
# Looks at $PYTHON<XY> (e.g. PYTHON312), pythonX.Y on PATH, pyenv's versions, /usr/bin and
# /usr/local/bin; each candidate is run, so a pyenv shim for an inactive version does not count.
# Never downloads an interpreter: the version under test must be one the machine really has.
set -uo pipefail
want="${1:?usage: find-python.sh X.Y}"
var="PYTHON${want//./}"
candidates=("${!var:-}" "$(command -v "python$want" 2>/dev/null)")
for d in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want"*/bin; do candidates+=("$d/python$want"); done
candidates+=("/usr/bin/python$want" "/usr/local/bin/python$want")
for py in "${candidates[@]}"; do
  [ -n "$py" ] && [ -x "$py" ] || continue
  got="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || continue
  if [ "$got" = "$want" ]; then
    echo "$py"
    exit 0
  fi
done
cat >&2 <<MSG
error: no Python $want on this machine, and the hub module must be tested on it (the z2jh hub
image runs Python $want). Install one (Debian: apt-get install python$want python$want-venv;
pyenv: pyenv install $want) or point $var at its interpreter, then run make again.
MSG
exit 1
