# The two commands of the README. Both set everything up on a fresh machine first.
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test lint bootstrap
bootstrap:
	bash scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/lion demo $(ARGS)

test: bootstrap
	.venv/bin/python -m ruff check .
	.venv/bin/python -m pytest -q $(ARGS)

lint: bootstrap
	.venv/bin/python -m ruff check .
