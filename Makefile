# The two commands of the README. Both set everything up on a fresh machine first.
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo ablate test test-browser chromium lint bootstrap
bootstrap:
	bash scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/lion demo $(ARGS)

# Lion against uniform (equal data), uniform (equal cost) and seed-only on the demo preset, over
# SEEDS seeds (docs/method.md): paired differences with 95% intervals, USD per arm.
SEEDS ?= 5
ablate: bootstrap
	mkdir -p lion-runs && .venv/bin/lion demo --write-config lion-runs/ablate.yaml
	.venv/bin/lion ablate -c lion-runs/ablate.yaml --seeds $(SEEDS) --root lion-runs/ablation $(ARGS)

# The whole suite, the browser test included. Debian's Chromium is installed (apt-get, as root)
# beside the Python set-up, not after it; without root or Chromium, run the rest with
# `make test MARKS="not browser"`. Test files are spread over TEST_WORKERS processes
# (pytest-xdist; a file's tests stay together, so each file's module fixtures, e.g. one Prefect
# stack, are built once): most tests wait on servers and subprocesses, so 2 workers help even on
# 2 cores. TEST_WORKERS=0 runs them in this process.
# Each worker's OpenMP threads are sized to its share of the cores, and idle threads sleep
# (OMP_WAIT_POLICY=PASSIVE): two workers each training with threads for every core, busy-waiting,
# slowed a step 20x or more, and a DeepSpeed test ran past its timeout. Trainers and generation
# workers take OMP_NUM_THREADS from the environment when it is set (lion_core/student/launch.py).
# The 15 slowest setups and tests are printed at the end (where CI's time goes).
TEST_WORKERS ?= 2
MARKS ?=
test:
	$(MAKE) --no-print-directory -j2 bootstrap $(if $(findstring not browser,$(MARKS)),,chromium)
	.venv/bin/python -m ruff check .
	w=$(TEST_WORKERS); [ "$$w" -gt 0 ] || w=1; t=$$(( $$(nproc) / w )); [ "$$t" -ge 1 ] || t=1; \
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$t} OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} \
	.venv/bin/python -m pytest -q -m "$(MARKS)" -n $(TEST_WORKERS) --dist loadfile --durations=15 $(ARGS)

# Only the browser tests, Debian's headless Chromium: the Prefect UI (tests/test_ui_browser.py)
# and a round's report (tests/test_round_flow.py); installs Chromium with apt-get when it is
# missing (needs root). Playwright never downloads a browser.
test-browser: bootstrap chromium
	.venv/bin/python -m pytest -q -m browser tests/test_ui_browser.py tests/test_round_flow.py $(ARGS)

chromium:
	@command -v chromium >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || { echo "install Debian's chromium (apt-get install chromium) as root" >&2; exit 1; }

lint: bootstrap
	.venv/bin/python -m ruff check .
