"""The ``sagemaker`` backend: the training container as an Amazon SageMaker training job.

Everything goes through boto3 (``sagemaker`` and CloudWatch ``logs`` clients) built with botocore's
``standard`` retry mode, so throttling and transient errors are retried with backoff by botocore;
what still fails surfaces as :class:`~api.domain.errors.BackendError` with
``details = {"aws_error": <code>, "transient": <bool>}`` so the caller can tell "try again later"
from "this job cannot start".

Contract with the service:

* ``start_training`` returns the state to keep: ``{"training_job_arn", "output_s3"}`` where
  ``output_s3`` is ``store.uri(spec.output_prefix)`` (the job's ``S3OutputPath``). Later calls only
  read ``output_s3`` (for the model archive); a missing key falls back to ``DescribeTrainingJob``.
* SageMaker writes the model directory as ``{output_prefix}/{job_name}/output/model.tar.gz`` with
  the files of ``/opt/ml/model`` at the archive's top level (``adapter_config.json``,
  ``adapter_model.safetensors``, ``eval.json`` …); ``fetch_model`` unpacks exactly that.
* Input channels: one ``S3Prefix`` channel per split whose prefix is the full key of the split
  object. An S3 prefix also matches longer keys (``train.jsonl`` matches ``train.jsonl.bak``), and
  the engine reads every ``*.jsonl`` under a channel directory. In our layout a dataset folder
  ``{tenant}/datasets/{ds}/`` is written once by the dataset service and holds only the fixed
  names ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` and ``manifest.json`` — none is a
  prefix of another — so the prefix selects exactly one object. Rather than trust that silently,
  ``start_training`` lists each prefix and refuses to launch unless it matches exactly the one split
  object (a manifest file would also work, but costs an extra object per job for no gain here).
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from scu.metrics_format import parse_line

from api.backends.archives import safe_extract
from api.backends.aws_errors import backend_error, error_code, error_message
from api.backends.base import TrainingSpec, TrainingStatus
from api.backends.sagemaker_base import MAX_ATTEMPTS as MAX_ATTEMPTS  # the retry budget tests count
from api.backends.sagemaker_base import RETRY_CONFIG, SageMakerService
from api.backends.sagemaker_training_request import training_request
from api.backends.sagemaker_training_status import status_from_description
from api.domain.errors import BackendError, Conflict
from api.logging import get_logger
from api.storage.s3 import S3Store

log = get_logger("backend.sagemaker")

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
LOG_PAGE_SIZE = 10_000  # the most FilterLogEvents / GetLogEvents return per call
LOG_REREAD_MS = 5 * 60 * 1000  # incremental metric reads look back this far for late events
METRICS_CACHE_JOBS = 512  # jobs whose metric cursor this process keeps
MODEL_ARCHIVE = "model.tar.gz"


@dataclass
class _MetricsCursor:
    floor: int  # the after_step of the read that left this cursor
    newest_ms: int | None = None  # timestamp of the newest event read so far
    records: dict[int, dict[str, float]] = field(default_factory=dict)  # step > floor


class SageMakerBackend(SageMakerService):
    """:class:`~api.backends.base.ComputeBackend` on Amazon SageMaker training jobs."""

    name = "sagemaker"
    model_access = "hub"  # the job downloads hub models itself (gated ones with the token secret)

    def __init__(self, store: S3Store, *, logs_client: Any = None, **options: Any) -> None:
        """``options``: those of :class:`~api.backends.sagemaker_base.SageMakerService`."""
        super().__init__(store, **options)
        # No boto3 stubs for CloudWatch Logs in the dev extra; the calls used are few and plain.
        self.logs: Any = logs_client or boto3.client("logs", region_name=self.region, config=RETRY_CONFIG)
        self.log_page_size = LOG_PAGE_SIZE
        self._metrics: OrderedDict[str, _MetricsCursor] = OrderedDict()
        self._metrics_lock = threading.Lock()

    # -- launch -------------------------------------------------------------------------------
    def build_request(self, spec: TrainingSpec) -> dict[str, Any]:
        """The exact ``CreateTrainingJob`` request for ``spec`` (validated, no I/O)."""
        return training_request(
            spec,
            store=self.store,
            image_uri=self.image_uri,
            role_arn=self.role_arn,
            environment=self.token_environment(),
        )

    def start_training(self, spec: TrainingSpec) -> dict[str, Any]:
        """Create the training job; idempotent for the same ``spec.job_name``.

        An existing job of that name is accepted when it is the same job (same output path and
        hyperparameters) and raises :class:`Conflict` otherwise; nothing is created twice.
        """
        request = self.build_request(spec)
        output_s3 = request["OutputDataConfig"]["S3OutputPath"]
        existing = self._describe(spec.job_name)
        if existing is None:
            self._check_channels(spec)
            try:
                created = self.sagemaker.create_training_job(**request)
            except BotoCoreError as exc:
                raise backend_error(f"could not create training job {spec.job_name}", exc) from exc
            except ClientError as exc:
                if not _already_exists(exc):
                    raise backend_error(f"could not create training job {spec.job_name}", exc) from exc
                existing = self._describe(spec.job_name)  # lost a race with another start
                if existing is None:
                    raise backend_error(f"could not create training job {spec.job_name}", exc) from exc
            else:
                log.info("created training job %s", spec.job_name)
                return {"training_job_arn": created["TrainingJobArn"], "output_s3": output_s3}
        self._check_same_job(request, existing)
        log.info("training job %s already exists; reusing it", spec.job_name)
        return {"training_job_arn": existing["TrainingJobArn"], "output_s3": output_s3}

    def find_training(self, job_name: str) -> dict[str, Any] | None:
        """``DescribeTrainingJob`` by name: the state to keep, or None when no job has that name."""
        desc = self._describe(job_name)
        if desc is None:
            return None
        output_s3 = str((desc.get("OutputDataConfig") or {}).get("S3OutputPath", "")).rstrip("/")
        return {"training_job_arn": desc["TrainingJobArn"], "output_s3": output_s3}

    def _check_channels(self, spec: TrainingSpec) -> None:
        for channel, key in spec.channels.items():
            keys = sorted(info.key for info in self.store.list(key))
            if keys == [key]:
                continue
            if key not in keys:
                raise BackendError(f"input channel {channel!r}: {self.store.uri(key)} does not exist")
            raise BackendError(
                f"input channel {channel!r}: the S3 prefix {self.store.uri(key)} matches {len(keys)} objects "
                f"({', '.join(keys[:5])}); it must match exactly the split file"
            )

    def _check_same_job(self, request: Mapping[str, Any], existing: Mapping[str, Any]) -> None:
        name = request["TrainingJobName"]
        theirs_out = str(existing.get("OutputDataConfig", {}).get("S3OutputPath", "")).rstrip("/")
        theirs_hp = existing.get("HyperParameters") or {}
        if (
            theirs_out != request["OutputDataConfig"]["S3OutputPath"]
            or theirs_hp != request["HyperParameters"]
        ):
            raise Conflict(
                f"a SageMaker training job named {name} already exists with a different configuration",
                details={"training_job_arn": existing.get("TrainingJobArn")},
            )

    # -- status -------------------------------------------------------------------------------
    def describe_training(self, job_name: str, state: dict[str, Any]) -> TrainingStatus:
        desc = self._describe(job_name)
        if desc is None:
            raise BackendError(f"SageMaker training job {job_name} does not exist")
        return status_from_description(desc)

    def _describe(self, job_name: str) -> dict[str, Any] | None:
        """``DescribeTrainingJob``, or None when no job has that name."""
        try:
            return dict(self.sagemaker.describe_training_job(TrainingJobName=job_name))
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and _not_found(exc):
                return None
            raise backend_error(f"could not describe training job {job_name}", exc) from exc

    # -- stop ---------------------------------------------------------------------------------
    def stop_training(self, job_name: str, state: dict[str, Any]) -> None:
        """Ask SageMaker to stop the job (SIGTERM; the engine checkpoints). No-op unless in progress."""
        desc = self._describe(job_name)
        if desc is None:
            log.warning("stop: training job %s does not exist; nothing to stop", job_name)
            return
        if desc.get("TrainingJobStatus") != "InProgress":
            return  # finished, or already stopping
        try:
            self._call_stop(job_name)
        except (ClientError, BotoCoreError) as exc:
            if error_code(exc) == "ValidationException" and "status" in error_message(exc).lower():
                return  # finished between the describe and the stop
            raise backend_error(f"could not stop training job {job_name}", exc) from exc
        log.info("asked training job %s to stop", job_name)

    def _call_stop(self, job_name: str) -> None:
        """The one ``StopTrainingJob`` call (a seam: moto does not implement it)."""
        self.sagemaker.stop_training_job(TrainingJobName=job_name)

    # -- logs and metrics ---------------------------------------------------------------------
    def read_metrics(self, job_name: str, state: dict[str, Any], after_step: int) -> list[dict[str, float]]:
        """Training metric records parsed from the job's CloudWatch log, ``step > after_step``, by step.

        Only ``[scu]`` step lines count; the final ``[scu-eval]`` line carries no step and is left
        out (the held-out evaluation reaches the service as ``eval.json`` in the model archive).
        When a step appears more than once (a spot restart resumes from the last checkpoint and
        replays the steps after it; every host of a multi-node job may print), the latest line wins.

        Reading is incremental within this process: the records above ``after_step`` and the time
        of the newest event are cached per job, and the next call only asks CloudWatch for events
        from ``LOG_REREAD_MS`` before that time (late-arriving events are picked up). The cache is
        an optimisation only: a new process, or an ``after_step`` below the last one, re-reads all.
        """
        with self._metrics_lock:
            cursor = self._metrics.pop(job_name, None)
        if cursor is None or after_step < cursor.floor:
            cursor = _MetricsCursor(floor=after_step)
        start = cursor.newest_ms - LOG_REREAD_MS if cursor.newest_ms is not None else None
        by_step = {step: rec for step, rec in cursor.records.items() if step > after_step}
        newest = cursor.newest_ms
        for timestamp, message in self._filter_events(job_name, start_ms=start):
            newest = timestamp if newest is None else max(newest, timestamp)
            for line in message.splitlines():
                record = parse_line(line)
                if record is None or "step" not in record:
                    continue
                step = int(record["step"])
                if step > after_step:
                    by_step[step] = record
        with self._metrics_lock:
            self._metrics[job_name] = _MetricsCursor(floor=after_step, newest_ms=newest, records=by_step)
            while len(self._metrics) > METRICS_CACHE_JOBS:
                self._metrics.popitem(last=False)
        return [by_step[step] for step in sorted(by_step)]

    def read_logs(self, job_name: str, state: dict[str, Any], tail: int) -> list[str]:
        """The last ``tail`` lines of the job's log (all hosts, interleaved by time)."""
        if tail <= 0:
            return []
        events: list[tuple[int, str]] = []
        for stream in self._log_streams(job_name):
            events.extend(self._stream_tail(stream, tail))
        events.sort(key=lambda event: event[0])  # stable: keeps each stream's own order
        lines = [line for _, message in events for line in message.rstrip("\n").split("\n")]
        return lines[-tail:]

    def _log_streams(self, job_name: str) -> list[str]:
        """The job's log streams (``{job_name}/algo-N-…``); none before the instances start."""
        names: list[str] = []
        kwargs: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamNamePrefix": f"{job_name}/"}
        try:
            for page in _pages(self.logs.describe_log_streams, kwargs):
                names.extend(s["logStreamName"] for s in page.get("logStreams", []))
        except (ClientError, BotoCoreError) as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return []
            raise backend_error(f"could not list the log streams of {job_name}", exc) from exc
        return sorted(names)

    def _filter_events(self, job_name: str, *, start_ms: int | None = None) -> list[tuple[int, str]]:
        """The job's events (``(timestamp, message)``, time order), from ``start_ms`` when given.

        One ``FilterLogEvents`` query by stream-name prefix (plus its pages), not one per stream:
        the API allows only a few calls per second per account. Streams are checked again here
        because a prefix query is all CloudWatch does, and some emulators ignore the prefix.
        """
        own = f"{job_name}/"
        kwargs: dict[str, Any] = {
            "logGroupName": LOG_GROUP,
            "logStreamNamePrefix": own,
            "limit": self.log_page_size,
        }
        if start_ms is not None:
            kwargs["startTime"] = max(0, start_ms)
        events: list[tuple[int, str]] = []
        try:
            for page in _pages(self.logs.filter_log_events, kwargs):
                events.extend(
                    (int(e.get("timestamp", 0)), str(e.get("message", "")))
                    for e in page.get("events", [])
                    if str(e.get("logStreamName", "")).startswith(own)
                )
        except (ClientError, BotoCoreError) as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return []
            raise backend_error(f"could not read the log of {job_name}", exc) from exc
        events.sort(key=lambda event: event[0])  # stable: keeps each stream's own order
        return events

    def _stream_tail(self, stream: str, tail: int) -> list[tuple[int, str]]:
        """The last ``tail`` events of one stream, oldest first (pages backwards)."""
        out: list[tuple[int, str]] = []
        kwargs: dict[str, Any] = {
            "logGroupName": LOG_GROUP,
            "logStreamName": stream,
            "startFromHead": False,
            "limit": min(tail, self.log_page_size),
        }
        try:
            while len(out) < tail:
                page = self.logs.get_log_events(**kwargs)
                events = [(int(e.get("timestamp", 0)), str(e.get("message", ""))) for e in page["events"]]
                if not events:
                    break
                out = events + out
                token = page.get("nextBackwardToken")
                if not token or token == kwargs.get("nextToken"):
                    break
                kwargs["nextToken"] = token
        except (ClientError, BotoCoreError) as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return []
            raise backend_error(f"could not read log stream {stream}", exc) from exc
        return out[-tail:]

    # -- model --------------------------------------------------------------------------------
    def model_key(self, job_name: str, state: Mapping[str, Any]) -> str:
        """Store key of the job's ``model.tar.gz``: ``{output_prefix}/{job_name}/output/model.tar.gz``."""
        output_s3 = state.get("output_s3")
        if output_s3:
            prefix = self.store.key_from_uri(str(output_s3).rstrip("/"))
            return f"{prefix}/{job_name}/output/{MODEL_ARCHIVE}"
        desc = self._describe(job_name)
        artifact = ((desc or {}).get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        if not artifact:
            raise BackendError(f"training job {job_name} has no model artifact")
        return self.store.key_from_uri(str(artifact))

    def fetch_model(self, job_name: str, state: dict[str, Any], dest: Path) -> None:
        """Download the job's ``model.tar.gz`` and unpack it safely into ``dest``."""
        key = self.model_key(job_name, state)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="fastuner-model-") as tmp:
            archive = Path(tmp) / MODEL_ARCHIVE
            try:
                self.store.download_file(key, archive)
            except FileNotFoundError as exc:
                raise BackendError(f"training job {job_name} left no model at {self.store.uri(key)}") from exc
            safe_extract(archive, dest)
        if not (dest / "adapter_config.json").is_file():
            raise BackendError(f"the model archive of {job_name} holds no adapter_config.json")


# -- AWS helpers ------------------------------------------------------------------------------
def _not_found(exc: ClientError) -> bool:
    code, message = error_code(exc), error_message(exc).lower()
    if code in ("ResourceNotFound", "ResourceNotFoundException"):
        return True
    return code == "ValidationException" and ("not found" in message or "could not find" in message)


def _already_exists(exc: ClientError) -> bool:
    code, message = error_code(exc), error_message(exc).lower()
    return code in ("ValidationException", "ResourceInUse") and "already exists" in message


def _pages(call: Callable[..., Any], kwargs: dict[str, Any]) -> Iterator[Any]:
    """Every page of a ``nextToken``-paged CloudWatch Logs call; stops when the token stops
    changing too (CloudWatch may hand the last token back, and some emulators always do)."""
    kwargs = dict(kwargs)
    while True:
        page = call(**kwargs)
        yield page
        token = page.get("nextToken")
        if not token or token == kwargs.get("nextToken"):
            return
        kwargs["nextToken"] = token
