"""The main job on the embedded default, end to end: ``python -m cli.demo`` (``make demo``).

Runs the real ``fastuner`` commands in-process against ``$FASTUNER_HOME`` (default ``~/.fastuner``):
upload a sample dataset (validate, dedup, split, store), fine-tune a small offline model on it with
the SCU LoRA engine on the local backend, inspect the registered adapter, deploy it on a local
inference server, generate with it, and tear the deployment down. No network needed:
the model is the tiny random Llama the engine builds locally (``fastuner-train make-tiny-model``),
so the point is the pipeline, not the quality of the result.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console

from api.settings import get_settings
from cli.client import connect
from cli.main import cli

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "uppercase.jsonl"
console = Console()


def run(*args: str) -> None:
    console.rule(f"[bold]$ fastuner {' '.join(args)}")
    try:
        cli.main(args=list(args), prog_name="fastuner", standalone_mode=False)
    except SystemExit as exc:  # click exits on errors; the demo stops there too
        if exc.code:
            raise


def offline_model() -> Path:
    path = Path(
        os.environ.get("FASTUNER_DEMO_MODEL", get_settings().home / "models" / "tiny-llama")
    ).expanduser()
    if not (path / "config.json").is_file():
        from scu.tiny import build_tiny_model

        console.print(f"building the tiny offline model in {path}")
        build_tiny_model(path)
    return path


def main() -> None:
    if not SAMPLE.is_file():
        sys.exit(f"sample dataset not found: {SAMPLE}")
    model = offline_model()
    run("datasets", "upload", str(SAMPLE), "--name", "uppercase-demo", "--seed", "7")
    with connect(None) as client:
        dataset_id = client.list_datasets(limit=1)[0][0].id
    run("datasets", "preview", dataset_id, "--limit", "2")
    run("finetune", "start", "--dataset", dataset_id, "--model", str(model), "--max-steps", "40",
        "--hp", "log_every=5", "--wait")  # fmt: skip
    with connect(None) as client:
        job = client.list_jobs(limit=1)[0][0]
    if job.adapter_id is None:
        sys.exit(f"the fine-tune ended {job.status.value}: {job.failure_reason}")
    run("finetune", "metrics", job.id)
    run("adapters", "get", job.adapter_id)
    run("deployments", "create", job.adapter_id, "--ttl", "10m")
    run(
        "inference",
        "run",
        "--adapter",
        job.adapter_id,
        "--input",
        "Shout this: amber lotus",
        "--max-new-tokens",
        "12",
    )
    run("costs")
    with connect(None) as client:
        deployment = client.list_deployments(limit=1, live=True)[0][0]
    run("deployments", "delete", deployment.id)


if __name__ == "__main__":
    main()
