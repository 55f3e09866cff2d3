"""Container entry: ``python -m scu.entry train`` (SageMaker runs ``train``), or
``fastuner-train make-tiny-model PATH``.

Reads the SageMaker layout under ``$OPT_ML_ROOT`` (default ``/opt/ml``). Exit status: 0 done,
1 failed (reason in ``output/failure``; e.g. "Training diverged: the loss became non-finite at
step N …", and then ``model/`` holds no adapter), 143 stopped by SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from scu.paths import EXIT_FAILED, ContractPaths


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_train() -> int:
    from scu.hyperparams import HyperparameterError, load_hyperparameters

    paths = ContractPaths.from_env()
    rank = int(os.environ.get("RANK", "0"))
    try:
        cfg = load_hyperparameters(paths.hyperparameters)
    except HyperparameterError as exc:
        if rank == 0:
            paths.write_failure(str(exc))
        print(f"[scu] failed: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED

    from scu import distributed

    if not distributed.is_worker():
        plan = distributed.plan_launch(paths, cfg.num_processes, cfg.master_port)
        if plan.needed:
            return distributed.launch(paths, plan)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from scu.checkpoint import ResumeMismatch
    from scu.data import DataError
    from scu.job import JobError, run_job
    from scu.trainer import TrainingDiverged

    try:
        return run_job(paths, cfg)
    except TrainingDiverged as exc:
        message = str(exc)
    except (DataError, JobError, ResumeMismatch) as exc:
        message = f"{type(exc).__name__.replace('Error', ' error').replace('Mismatch', ' mismatch')}: {exc}"
    except Exception as exc:
        traceback.print_exc()
        message = f"Training failed: {type(exc).__name__}: {exc}"
    print(f"[scu] failed: {message}", file=sys.stderr, flush=True)
    if rank == 0 or not paths.failure_file.exists():
        paths.write_failure(message)
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastuner-train", description="SCU LoRA training engine")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("train", help="train under $OPT_ML_ROOT (default /opt/ml); the default command")
    tiny = sub.add_parser("make-tiny-model", help="write the tiny offline test model to PATH")
    tiny.add_argument("path")
    tiny.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _setup_logging()
    if args.command == "make-tiny-model":
        from scu.tiny import build_tiny_model

        print(build_tiny_model(args.path, seed=args.seed))
        return 0
    return run_train()


if __name__ == "__main__":
    sys.exit(main())
