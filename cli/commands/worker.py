"""``fastuner worker``: turns S3 drops into datasets and fine-tune jobs (an operator process).

Like ``fastuner server`` it runs the control plane's services itself (it is not a REST client):
``AppContext.build`` from the ``FASTUNER_*`` settings, then the drop service's SQS consumer or
scanner plus its retry sweep.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click
from rich.markup import escape

from cli.choices import WORKER_SOURCES
from cli.output import console, print_json
from cli.state import State, pass_state


@click.command()
@click.option(
    "--source",
    type=WORKER_SOURCES,
    default="auto",
    show_default=True,
    help="sqs: the bucket's event queue (FASTUNER_DROP_QUEUE_URL); scan: list drop/ (the local store, "
    "or buckets without notifications); auto: sqs when a queue is configured",
)
@click.option("--once", is_flag=True, help="process what is there now, then exit")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=None,
    help="seconds between scans and retry sweeps [default: FASTUNER_DROP_SCAN_INTERVAL_SECONDS]",
)
@pass_state
def worker(state: State, source: str, once: bool, interval: float | None) -> None:
    """Drop-and-train: drop/{tenant}/<name>.jsonl becomes a dataset and a fine-tune job."""
    from api.context import AppContext
    from api.logging import configure_logging
    from api.services.drops.worker import DropWorker, Source
    from api.settings import get_settings

    settings = get_settings()
    resolved: Source = "scan"
    if source == "sqs" or (source == "auto" and settings.drop_queue_url):
        if not settings.drop_queue_url:
            raise click.UsageError("--source sqs needs FASTUNER_DROP_QUEUE_URL")
        resolved = "sqs"
    configure_logging(settings.log_level, json_format=settings.log_json)
    ctx = AppContext.build(settings)
    try:
        drop_worker = DropWorker(
            ctx.drops,
            source=resolved,
            interval=interval or settings.drop_scan_interval_seconds,
            queue_wait=settings.drop_queue_wait_seconds,
        )
        if once:
            summary = drop_worker.run_once()
            if state.json:
                print_json(summary.as_dict())
                return
            counts = ", ".join(f"{n} {action}" for action, n in sorted(summary.counts().items()))
            console.print(f"{resolved}: {summary.messages} message(s); {counts or 'no drops'}")
            for o in summary.outcomes:
                if o.action != "ignored":
                    ids = " ".join(i for i in (o.dataset_id, o.job_id) if i)
                    console.print(f"  · {escape(o.key)}: {o.action} {ids} {escape(o.message)}".rstrip())
            return
        stop = threading.Event()

        def _stop(signum: int, _frame: FrameType | None) -> None:
            console.print(f"stopping after the current step ({signal.Signals(signum).name})")
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        console.print(f"fastuner worker: {resolved}, bucket {ctx.drops.location.bucket}")
        drop_worker.run(stop)
    finally:
        ctx.close()
