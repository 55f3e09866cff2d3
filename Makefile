.PHONY: demo test bench lint

demo:  ## install and run the main job end to end on the embedded default
	bash scripts/bootstrap.sh train
	.venv/bin/python -m cli.demo

test:  ## install, lint, type-check, run every test (SQLite and PostgreSQL)
	bash scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/mypy
