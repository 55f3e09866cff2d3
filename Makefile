.PHONY: demo test bench lint images

demo:  ## install and run the main job end to end on the embedded default
	bash scripts/bootstrap.sh train
	.venv/bin/python -m cli.demo

test:  ## install, lint, type-check, run every test (SQLite and PostgreSQL)
	bash scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/mypy

images:  ## build and push both images to the stack's ECR repositories, e.g. make images ARGS="--stack fastuner --dry-run"
	.venv/bin/python -m infra.images $(ARGS)
