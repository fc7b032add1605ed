# The two commands of the README: `make run` serves the page, `make test` runs everything.
.PHONY: run test lint setup setup-system

run: setup
	@.venv/bin/livecomments serve

test: setup-system lint
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check src tests benches
	.venv/bin/mypy
	.venv/bin/lint-imports --no-cache

setup:
	@bash scripts/setup.sh

setup-system:
	bash scripts/setup.sh --system
