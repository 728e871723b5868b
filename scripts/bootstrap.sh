#!/usr/bin/env bash
# Set up .venv on a fresh machine: torch first (the CPU wheel unless TORCH_SPEC says otherwise),
# DeepSpeed without build isolation (it builds against that torch), then the project itself.
# uv installs all but torch (parallel downloads: a fresh bootstrap took 4 min with pip alone),
# compiling bytecode as pip does (uv does not by default; with PYTHONDONTWRITEBYTECODE set, as on
# CI, every process then compiled Prefect, transformers & co. from source: the suite ran 26 min
# instead of 18); pip installs torch, honouring the machine's pip configuration (find-links,
# constraints).
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
  "${pip[@]}" -U pip setuptools wheel uv
  .venv/bin/python -c 'import torch' 2>/dev/null || "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
  uv=(.venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python)
  .venv/bin/python -c 'import deepspeed' 2>/dev/null || "${uv[@]}" --no-build-isolation deepspeed
  "${uv[@]}" -e ".[dev]"
  echo "$want" > "$stamp"
fi
