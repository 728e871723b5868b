#!/usr/bin/env bash
# Build the kit for a GPU check of issue 25 inside a checkout (default: this one), all of it in
# folders that checkout's .git/info/exclude ignores, to be carried to a GPU machine:
#   .whl/      the wheels that machine lacks (scripts/gpu/wheels.txt, deepspeed built from its
#              sdist: pure Python, its ops JIT-built on use), ~41 MiB
#   .gpu/repo  this branch's committed tree (the checkout that travels may be another branch)
#   .gpu/data  the benchmark's three files of ../shared/data, gzipped (~1.6 MiB)
#   .gpu/run.sh  the device command (scripts/gpu/run.sh)
# Then, from that checkout, on the machine:  bash .gpu/run.sh round bench liger 2>&1 | tee $OUT/log
# (carry .whl and .gpu). Run here on a CPU machine; it downloads with .venv's pip.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=$(cd "${1:-$HERE}" && pwd)
PY=${LION_PYTHON:-$HERE/.venv/bin/python}  # a worktree without .venv: LION_PYTHON=...
PIP=("$PY" -m pip)
cd "$TARGET"
exclude=$(git rev-parse --git-common-dir)/info/exclude
for path in /.whl/ /.gpu/; do grep -qxF "$path" "$exclude" 2>/dev/null || echo "$path" >>"$exclude"; done
mkdir -p .whl .gpu/data
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 \
  manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do platforms+=(--platform "${p}_x86_64"); done
grep -v '^#' "$HERE/scripts/gpu/wheels.txt" | while read -r req; do
  "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$req"
done
ds=$("$PY" -c 'import importlib.metadata as m; print(m.version("deepspeed"))')
ls .whl/deepspeed-"$ds"-*.whl >/dev/null 2>&1 ||
  DS_BUILD_OPS=0 "${PIP[@]}" wheel -q --no-deps --no-build-isolation "deepspeed==$ds" -w .whl
data=${LION_SHARED_DATA:-$HERE/../shared/data}
for f in gsm8k_train_alpaca_format.json gpteacher_toolformer_alpaca_format.json \
  self_instruct_seed_tasks.jsonl; do gzip -9 -c "$data/$f" >".gpu/data/$f.gz"; done
rm -rf .gpu/repo && mkdir -p .gpu/repo
git -C "$HERE" archive HEAD | tar -x -C .gpu/repo
cp "$HERE/scripts/gpu/run.sh" .gpu/run.sh
du -sh .whl .gpu
