#!/usr/bin/env bash
# Set up .venv on a fresh machine: torch first (the CPU wheel unless TORCH_SPEC says otherwise),
# DeepSpeed without build isolation (it builds against that torch), then the project itself.
# Idempotent: does nothing when pyproject.toml and this script are unchanged since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "lion-distill needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.lion-bootstrap
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  "${pip[@]}" -U pip setuptools wheel
  .venv/bin/python -c 'import torch' 2>/dev/null || "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
  .venv/bin/python -c 'import deepspeed' 2>/dev/null || "${pip[@]}" --no-build-isolation deepspeed
  "${pip[@]}" -e ".[dev]"
  echo "$want" > "$stamp"
fi
