"""The main job on the embedded default, end to end: ``python -m cli.demo`` (``make demo``).

Runs the real ``fastuner`` commands in-process against ``$FASTUNER_HOME`` (default ``~/.fastuner``):
upload a sample dataset (validate, dedup, split, store), then inspect it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

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


def main() -> None:
    if not SAMPLE.is_file():
        sys.exit(f"sample dataset not found: {SAMPLE}")
    run("datasets", "upload", str(SAMPLE), "--name", "uppercase-demo", "--seed", "7")
    with connect(None) as client:
        dataset_id = client.list_datasets(limit=1)[0][0].id
    run("datasets", "get", dataset_id)
    run("datasets", "preview", dataset_id, "--limit", "3")
    run("datasets", "list", "--limit", "5")


if __name__ == "__main__":
    main()
