#!/usr/bin/env bash
# Checks, without a TPU or GPU and without downloading the wheels, that the locked accelerator installs
#   pip install -e '.[tpu]'  -c constraints.txt
#   pip install -e '.[cuda]' -c constraints.txt
# resolve to wheels on PyPI for every supported Python (3.11, 3.12, 3.13) on the platform these extras run on:
# Linux x86-64 with glibc 2.35 (Ubuntu 22.04, the base of the Cloud TPU VM runtimes; newer systems accept
# the same wheels). The lock (constraints.txt) is made on Python 3.11; this is what tells whether the same pins
# exist as wheels for the other Pythons (jaxlib, numpy, libtpu and others publish one wheel per Python).
#
# Resolution is by `uv pip compile` (uv from PyPI): it reads each wheel's metadata with HTTP range requests
# instead of downloading it (pip's `--dry-run` downloads every wheel, about 3 GB for [cuda], when the index
# serves no separate metadata files) and evaluates environment markers for the target Python, not for the
# interpreter that runs it. Wheels only (`--only-binary :all:`: a package without a wheel would be built from
# source on the TPU/GPU host), except PURE_PYTHON_SDISTS, pure-Python packages PyPI has only as sdists.
#
# Usage: bash scripts/check_install_resolves.sh   (network to PyPI; about a minute)
#   Prints one line per combination, the resolved libtpu / CUDA plug-in and the packages the lock does not pin;
#   exits 1 if any combination does not resolve, after printing uv's explanation.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHONS=(3.11 3.12 3.13)
EXTRAS=(tpu cuda)
PLATFORM=x86_64-manylinux_2_35
UV_VERSION=0.13.9
# tensorflow-datasets depends on promise, which PyPI has only as a pure-Python sdist.
PURE_PYTHON_SDISTS=(promise)

work=$(mktemp -d "${TMPDIR:-/tmp}/ferjax-resolve.XXXXXX")
trap 'rm -rf "$work"' EXIT

if command -v uv >/dev/null 2>&1 && [[ $(uv --version | cut -d' ' -f2) == "$UV_VERSION" ]]; then
  uv=uv
else
  python3 -m venv "$work/uv-venv"
  "$work/uv-venv/bin/python" -m pip install --quiet "uv==$UV_VERSION"
  uv="$work/uv-venv/bin/uv"
fi
no_binary=()
for name in "${PURE_PYTHON_SDISTS[@]}"; do
  no_binary+=(--no-binary "$name")
done

# Package names pinned by the lock, normalised (PEP 503), to list what an extra adds unpinned.
locked=$(grep -E '^[A-Za-z0-9]' constraints.txt | cut -d= -f1 | tr 'A-Z_.' 'a-z--' | sort -u)

failed=()
for python in "${PYTHONS[@]}"; do
  for extra in "${EXTRAS[@]}"; do
    out="$work/$python-$extra.txt"
    start=$SECONDS
    if ! "$uv" pip compile pyproject.toml --quiet --no-config --no-header --no-annotate \
        --extra "$extra" -c constraints.txt --python-version "$python" --python-platform "$PLATFORM" \
        --only-binary :all: "${no_binary[@]}" \
        -o "$out" 2>"$work/err"; then
      echo "FAIL  Python $python [$extra] ($PLATFORM): does not resolve with the lock:"
      sed 's/^/      /' "$work/err"
      failed+=("$python [$extra]")
      continue
    fi
    accel=$(grep -E '^(libtpu|jax-cuda[0-9]+-plugin)==' "$out" | tr '\n' ' ')
    unpinned=$(grep -E '^[A-Za-z0-9]' "$out" | cut -d= -f1 | tr 'A-Z_.' 'a-z--' | sort -u |
               comm -23 - <(echo "$locked") | tr '\n' ' ')
    echo "ok    Python $python [$extra] ($PLATFORM): $(grep -c '==' "$out") packages, ${accel}in $((SECONDS - start)) s;" \
         "not pinned by the lock: ${unpinned:-none}"
  done
done
if ((${#failed[@]})); then
  echo "The locked install does not resolve for: ${failed[*]}" >&2
  exit 1
fi
echo "The locked [tpu] and [cuda] installs resolve for Python ${PYTHONS[*]} ($PLATFORM)."
