"""The API under load: concurrent clients uploading datasets and starting jobs, on PostgreSQL.

    python benchmarks/load.py                          # 200 clients x 2 rounds per target
    python benchmarks/load.py --clients 50 --rounds 4 --tenants 5 --db-url postgresql+psycopg://...

Every client (its own ``httpx.AsyncClient``: its own keep-alive connection, opened afresh each
round) does, per round:
upload a small dataset (multipart ``POST /v0/datasets``, ``--rows`` rows of
examples/uppercase.jsonl made unique per client and round), ``POST /v0/finetune`` on it with an
``Idempotency-Key`` (a transport error is retried with the same key, so a retry can't make a
second job), then ``GET /v0/finetune/{id}``. Clients are spread over ``--tenants`` tenants, each
with its own API key and its quotas raised so that no 429 is expected: every non-2xx answer and
every transport error is an error, and the acceptance is 0 errors.

What runs (all on 127.0.0.1, nothing leaves the machine):
* PostgreSQL: ``scripts/postgres.sh`` (as ``scripts/test.sh`` does) unless ``--db-url`` names a
  server; the bench creates a throw-away database there and drops it afterwards.
* ``moto_server`` in a subprocess stands in for S3 and SageMaker: the API runs with the real
  ``sagemaker`` backend and ``s3`` store, whose boto3 clients reach it through
  ``FASTUNER_S3_ENDPOINT_URL`` and ``AWS_ENDPOINT_URL`` (botocore honours it for every client).
  A job start therefore does the real work (S3 manifest read, channel listing,
  DescribeTrainingJob, CreateTrainingJob) and no training process is spawned. moto answers on
  this machine's CPUs where AWS would answer over the network: it costs CPU here that AWS would
  not, and it has none of AWS's network latency.
* The API: ``create_app()`` under uvicorn in a subprocess (one process, like
  ``benchmarks/submit_latency.py``), background loops off (the reconciler would only find moto's
  jobs "Completed" with no model and mark them failed).
* Baseline, same run, same clients: a bare FastAPI app on the same PostgreSQL (its own tables
  in the same database, an engine from the same ``api.db.session.make_engine``) answering the
  same three requests the same way (``async`` upload route that parses the multipart form, then
  ``def`` work on the threadpool): one single-row INSERT per upload, one INSERT ... ON CONFLICT
  on the idempotency key per start, one SELECT per get; no auth, no validation, no storage.
  Rounds alternate between the two targets; latencies are pooled per target and operation.

Afterwards the bench checks, in PostgreSQL directly (SQLAlchemy), per tenant: exactly one
``datasets`` row per successful upload (the same ids) and no other; exactly one
``finetune_jobs`` row per idempotency key that got a 2xx, with the id the API returned and no
other row; every job launched (status ``provisioning``) and present in moto's SageMaker; and in
S3 every dataset's split files (per its row counts) and ``manifest.json``, and no dataset
objects without a row. The baseline's rows are counted the same way. Exit status 1 on any
error or failed check.

Two more things are exercised:
* ``--dup-fraction`` of the clients (default 10 %) send every start twice at once, on two
  connections, with the same key and body: both answers must name the same job, and the database
  must hold one row for the key (the concurrent-insert path of the idempotency check).
* After the rounds, ``--quota-clients`` (40) clients of one more tenant whose
  ``max_concurrent_jobs`` is ``--quota-limit`` (8) start jobs at once: exactly 8 must be admitted
  and the other 32 answered 429 ``quota_exceeded`` (reported separately, not errors) — the
  per-tenant admission lock under contention.
The report also gives each server's CPU seconds and the peak PostgreSQL connections of each
server (open / busy / waiting on a lock; sampled from ``pg_stat_activity`` every 50 ms).

Measured (2 CPUs shared by the clients, the API, moto_server and PostgreSQL, with other work
running on the machine; CPU ~100 % busy throughout), defaults: 200 clients x 2 rounds, 1240
timed requests per target::

    target                op       requests    req/s   p50 ms   p95 ms   p99 ms  errors
    bare FastAPI + INSERT all          1240    213.1    940.7   1503.7   2022.2       0
    fastuner API          upload        400      7.5   7642.5  14899.7  16870.8       0
    fastuner API          start         440      8.3  11649.4  16002.7  16569.5       0
    fastuner API          get           400      7.5   5618.3  10592.0  12470.0       0
    fastuner API          all          1240     23.4   8803.6  15665.8  16515.7       0
    ratio api / bare: throughput 0.110, p50 9.36, p99 8.17
    quota: 40 starts at once, max_concurrent_jobs 8: 8 admitted, 32 answered 429
    checks passed: 0 errors; exactly the 460 datasets and 428 jobs answered (0 lost,
    0 duplicated; 60 double starts got one job each), S3 objects and SageMaker jobs all there

An earlier run under more load from other work: 15.6 vs 143.3 req/s (0.109), p99 21.4 vs
2.5 s (8.4x). All 200 requests of a round arrive at once, so latency is mostly queueing: a
cycle costs the API ~100 ms of CPU (~32 ms per request; per cycle: validation, dedup and split
of the upload, ~9 boto3 calls, ~10 short transactions) and moto_server ~57 ms, against ~2.5 ms
per request for the bare app. PostgreSQL never limited it: the API's pool (5 + 10 overflow) peaked
at 15 busy connections with at most 6 waiting on a lock in the rounds (14 in the same-tenant
quota burst, all on the tenant's admission lock), and no request waited out the pool's 30 s
timeout, here or in stress runs of 400 clients and 600 same-tenant starts at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request  # module level: the bare routes' annotations

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/load.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.servers import SERVER_PIDS, free_port, proc_cpu, process  # noqa: E402

SAMPLE = REPO / "examples" / "uppercase.jsonl"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
BUCKET = "fastuner-load"
IMAGE_URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fastuner-training:1"
INFERENCE_IMAGE_URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fastuner-inference:1"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/fastuner"
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTANCE_TYPE = "ml.g5.xlarge"
OPS = ("upload", "start", "get")
START_RETRIES = 3  # transport errors on POST /v0/finetune: retried with the same Idempotency-Key


# -- servers (subprocesses: ``load.py --serve api|bare --port N``) ----------------------------
def serve(kind: str, port: int) -> None:
    import uvicorn

    if kind == "api":
        from api.app import create_app

        app = create_app()
    else:
        app = bare_app(os.environ["FASTUNER_DATABASE_URL"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def bare_tables() -> Any:
    from sqlalchemy import Column, Integer, MetaData, String, Table, Text

    meta = MetaData()
    Table(
        "bare_datasets",
        meta,
        Column("id", String(32), primary_key=True),
        Column("name", String(128), nullable=False),
        Column("rows", Integer, nullable=False),
        Column("sha256", String(64), nullable=False),
    )
    Table(
        "bare_jobs",
        meta,
        Column("id", String(32), primary_key=True),
        Column("idempotency_key", String(128), nullable=False, unique=True),
        Column("dataset_id", String(32), nullable=False),
        Column("body", Text, nullable=False),
    )
    return meta


def bare_app(url: str) -> FastAPI:
    """The baseline: the same three routes, one plain statement each on the same PostgreSQL."""
    import hashlib

    from sqlalchemy import select
    from sqlalchemy.dialects.postgresql import insert
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

    from api.db.session import make_engine

    engine = make_engine(url)
    meta = bare_tables()
    datasets, jobs = meta.tables["bare_datasets"], meta.tables["bare_jobs"]
    app = FastAPI()

    def new_id(prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(8)}"

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def add_dataset(name: str, data: bytes) -> dict[str, Any]:
        row = {
            "id": new_id("ds"),
            "name": name,
            "rows": data.count(b"\n"),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        with engine.begin() as conn:
            conn.execute(datasets.insert().values(**row))
        return row

    @app.post("/v0/datasets", status_code=201)
    async def upload(request: Request) -> dict[str, Any]:
        form = await request.form(max_files=1)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "file missing")
            data = await upload.read()
            return await run_in_threadpool(add_dataset, str(form.get("name")), data)
        finally:
            await form.close()

    def add_job(body: dict[str, Any], key: str) -> dict[str, Any]:
        with engine.begin() as conn:
            conn.execute(
                insert(jobs)
                .values(
                    id=new_id("ft"),
                    idempotency_key=key,
                    dataset_id=str(body["dataset_id"]),
                    body=json.dumps(body),
                )
                .on_conflict_do_nothing(index_elements=["idempotency_key"])
            )
            row = conn.execute(select(jobs).where(jobs.c.idempotency_key == key)).one()
        return dict(row._mapping)

    @app.post("/v0/finetune", status_code=201)
    async def start(request: Request) -> dict[str, Any]:
        body = await request.json()
        return await run_in_threadpool(add_job, body, request.headers["idempotency-key"])

    @app.get("/v0/finetune/{job_id}")
    def get(job_id: str) -> dict[str, Any]:
        with engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one_or_none()
        if row is None:
            raise HTTPException(404, "not found")
        return dict(row._mapping)

    return app


@contextmanager
def server(kind: str, work: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with process(kind, cmd, work, env, url + "/healthz"):
        yield url


@contextmanager
def moto(work: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    with process("moto", cmd, work, env, url + "/moto-api/"):
        yield url


# -- PostgreSQL ----------------------------------------------------------------------------------
def postgres_server(url: str | None) -> str:
    if url:
        return url
    out = subprocess.run(["bash", str(REPO / "scripts" / "postgres.sh")], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise SystemExit(
            f"scripts/postgres.sh could not start PostgreSQL (pass --db-url):\n{out.stderr[-2000:]}"
        )
    return out.stdout.strip().splitlines()[-1]


@contextmanager
def scratch_database(server_url: str, name: str, keep: bool) -> Iterator[str]:
    """A fresh database on ``server_url``'s server, dropped afterwards (unless ``keep``)."""
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(make_url(server_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- clients -------------------------------------------------------------------------------------
@dataclass
class Ledger:
    """What one target answered: latencies, errors, and the rows its 2xx answers promise."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("clients", "server", "moto"), 0.0))
    datasets: dict[str, dict[str, str]] = field(default_factory=dict)  # tenant -> {ds id: name}
    jobs: dict[str, dict[str, str]] = field(default_factory=dict)  # tenant -> {idem key: job id}
    job_dataset: dict[str, str] = field(default_factory=dict)  # job id -> dataset id
    got: dict[str, str] = field(default_factory=dict)  # job id -> id in the GET answer
    dup_pairs: int = 0  # starts sent twice at once with one key
    dup_mismatch: list[str] = field(default_factory=list)  # pairs answered with two different jobs

    def absorb(self, other: Ledger) -> None:
        """Take ``other``'s errors and promised rows, not its timings (a warm-up)."""
        self.errors += other.errors
        self.dup_pairs += other.dup_pairs
        self.dup_mismatch += other.dup_mismatch
        for tenant, ds in other.datasets.items():
            self.datasets.setdefault(tenant, {}).update(ds)
        for tenant, jobs in other.jobs.items():
            self.jobs.setdefault(tenant, {}).update(jobs)
        self.job_dataset.update(other.job_dataset)
        self.got.update(other.got)


@dataclass(frozen=True)
class Client:
    index: int
    tenant: str
    key: str
    dup: bool = False  # sends each start twice at once, with the same Idempotency-Key


def payload(client: Client, tag: str, rows: list[dict[str, str]]) -> bytes:
    """``rows`` made unique to this client and round (no dedup across uploads, distinct hashes)."""
    return "".join(
        json.dumps({"input": f"{r['input']} [{tag}]", "target": f"{r['target']} [{tag.upper()}]"}) + "\n"
        for r in rows
    ).encode()


async def timed(
    ledger: Ledger,
    op: str,
    send: Callable[[], Awaitable[httpx.Response]],
    retries: int = 0,
    expected: frozenset[int] = frozenset(),
) -> httpx.Response | None:
    """One request (retried after transport errors): the 2xx (or ``expected``) response, or None
    (an error, recorded)."""
    for _ in range(retries + 1):
        started = time.perf_counter()
        try:
            resp = await send()
        except httpx.TransportError as exc:
            ledger.errors.append(f"{op}: {type(exc).__name__}: {exc}")
            continue
        ledger.latencies[op].append(time.perf_counter() - started)
        if resp.is_success or resp.status_code in expected:
            return resp
        ledger.errors.append(f"{op}: HTTP {resp.status_code} {resp.text[:300]}")
        return None
    return None


def job_body(dataset_id: str) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "base_model": BASE_MODEL,
        "instance_type": INSTANCE_TYPE,
        "max_steps": 20,
    }


async def upload(
    http: httpx.AsyncClient, client: Client, ledger: Ledger, name: str, data: bytes
) -> str | None:
    """``POST /v0/datasets``: the new dataset's id (not retried: an upload has no idempotency key)."""
    resp = await timed(
        ledger,
        "upload",
        lambda: http.post(
            "/v0/datasets",
            data={"name": name},
            files={"file": (f"{name}.jsonl", data, "application/x-ndjson")},
        ),
    )
    if resp is None:
        return None
    dataset_id = str(resp.json()["id"])
    ledger.datasets.setdefault(client.tenant, {})[dataset_id] = name
    return dataset_id


async def start(
    http: httpx.AsyncClient,
    client: Client,
    ledger: Ledger,
    key: str,
    dataset_id: str,
    expected: frozenset[int] = frozenset(),
) -> httpx.Response | None:
    """``POST /v0/finetune`` with ``Idempotency-Key: key``; a 2xx is recorded as the key's job."""
    body = job_body(dataset_id)
    resp = await timed(
        ledger,
        "start",
        lambda: http.post("/v0/finetune", json=body, headers={"Idempotency-Key": key}),
        retries=START_RETRIES,
        expected=expected,
    )
    if resp is not None and resp.is_success:
        job_id = str(resp.json()["id"])
        ledger.jobs.setdefault(client.tenant, {})[key] = job_id
        ledger.job_dataset[job_id] = dataset_id
    return resp


async def one_round(
    http: httpx.AsyncClient, client: Client, ledger: Ledger, run: str, rnd: int, data: bytes
) -> None:
    """Upload → start → get; a ``dup`` client sends its start twice at once (same key and body)."""
    tag = f"{run}-c{client.index:04d}-r{rnd}"
    dataset_id = await upload(http, client, ledger, f"load-{tag}", data)
    if dataset_id is None:
        return
    key = f"{tag}-{secrets.token_hex(4)}"
    if client.dup:
        pair = await asyncio.gather(*(start(http, client, ledger, key, dataset_id) for _ in range(2)))
        ids = [str(r.json()["id"]) for r in pair if r is not None]
        ledger.dup_pairs += 1
        if len(set(ids)) > 1:
            ledger.dup_mismatch.append(f"key {key}: two jobs {ids}")
    elif await start(http, client, ledger, key, dataset_id) is None:
        return
    job_id = ledger.jobs.get(client.tenant, {}).get(key)
    if job_id is None:
        return
    resp = await timed(ledger, "get", lambda: http.get(f"/v0/finetune/{job_id}"))
    if resp is not None:
        ledger.got[job_id] = str(resp.json()["id"])


def open_clients(url: str, clients: list[Client], timeout: float) -> list[httpx.AsyncClient]:
    """One ``AsyncClient`` per client, one keep-alive connection each."""
    tls = ssl.create_default_context()  # unused on http://, but built once instead of 200 times
    return [
        httpx.AsyncClient(
            base_url=url,
            # A dup client's second start goes out at once, on a second connection (a client that
            # gave up waiting and resent), not queued behind the first.
            limits=httpx.Limits(max_connections=2 if c.dup else 1, max_keepalive_connections=1),
            timeout=timeout,
            verify=tls,
            headers={"Authorization": f"Bearer {c.key}"},
        )
        for c in clients
    ]


async def run_round(
    https: list[httpx.AsyncClient],
    clients: list[Client],
    ledger: Ledger,
    run: str,
    rnd: int,
    data: list[bytes],
) -> float:
    """All clients at once, one cycle each; the round's wall time."""
    started = time.perf_counter()
    await asyncio.gather(
        *(one_round(h, c, ledger, run, rnd, d) for h, c, d in zip(https, clients, data, strict=True))
    )
    return time.perf_counter() - started


async def close_all(https: list[httpx.AsyncClient]) -> None:
    await asyncio.gather(*(h.aclose() for h in https))


def measure(
    loop: asyncio.AbstractEventLoop,
    target: str,
    https: list[httpx.AsyncClient],
    clients: list[Client],
    ledger: Ledger,
    run: str,
    rnd: int,
    data: list[bytes],
) -> float:
    """One timed round against ``target``, with the CPU time each process spent on it."""
    pids = {name: pid for name, pid in SERVER_PIDS.items() if name in (target, "moto")}
    before = {name: proc_cpu(pid) for name, pid in pids.items()}
    cpu0 = time.process_time()
    secs = loop.run_until_complete(run_round(https, clients, ledger, run, rnd, data))
    ledger.elapsed += secs
    ledger.cpu["clients"] += time.process_time() - cpu0
    for name, pid in pids.items():
        ledger.cpu["server" if name == target else name] += proc_cpu(pid) - before[name]
    return secs


# -- checks --------------------------------------------------------------------------------------
def check_api(db_url: str, moto_url: str, ledger: Ledger, tenants: list[str]) -> list[str]:
    import boto3
    from sqlalchemy import create_engine, func, select

    from api.db.models import DatasetRow, FineTuneJobRow

    problems: list[str] = []
    engine = create_engine(db_url)
    with engine.connect() as conn:
        for tenant in tenants:
            want_ds = ledger.datasets.get(tenant, {})
            have_ds = dict(
                conn.execute(
                    select(DatasetRow.id, DatasetRow.name).where(DatasetRow.tenant_id == tenant)
                ).all()
            )
            lost = want_ds.keys() - have_ds.keys()
            extra = have_ds.keys() - want_ds.keys()
            if lost or extra:
                problems.append(
                    f"{tenant}: datasets lost {sorted(lost)[:5]} ({len(lost)}), "
                    f"extra {sorted(extra)[:5]} ({len(extra)})"
                )
            want_jobs = ledger.jobs.get(tenant, {})
            rows = conn.execute(
                select(
                    FineTuneJobRow.idempotency_key,
                    FineTuneJobRow.id,
                    FineTuneJobRow.dataset_id,
                    FineTuneJobRow.status,
                ).where(FineTuneJobRow.tenant_id == tenant)
            ).all()
            per_key = Counter(r.idempotency_key for r in rows)
            dup = {k: n for k, n in per_key.items() if n > 1}
            lost_keys = want_jobs.keys() - per_key.keys()
            extra_keys = {str(k) for k in per_key.keys() - want_jobs.keys()}
            if dup or lost_keys or extra_keys:
                problems.append(
                    f"{tenant}: jobs duplicated {dup}, lost keys {sorted(lost_keys)[:5]} "
                    f"({len(lost_keys)}), extra keys {sorted(extra_keys)[:5]} ({len(extra_keys)})"
                )
            for r in rows:
                if r.idempotency_key in want_jobs and want_jobs[r.idempotency_key] != r.id:
                    problems.append(
                        f"{tenant}: key {r.idempotency_key} answered {want_jobs[r.idempotency_key]} "
                        f"but the row is {r.id}"
                    )
                if ledger.job_dataset.get(r.id, r.dataset_id) != r.dataset_id:
                    problems.append(
                        f"{tenant}: job {r.id} is on {r.dataset_id}, not {ledger.job_dataset[r.id]}"
                    )
                if r.status != "provisioning":
                    problems.append(f"{tenant}: job {r.id} is {r.status}, not provisioning (launched)")
        counts = conn.execute(
            select(FineTuneJobRow.tenant_id, func.count()).group_by(FineTuneJobRow.tenant_id)
        ).all()
        if {t for t, _ in counts} - set(tenants):
            problems.append(f"jobs of unexpected tenants: {counts}")
        ds_rows = conn.execute(select(DatasetRow.id, DatasetRow.tenant_id, DatasetRow.row_counts)).all()
        job_names = set(conn.execute(select(FineTuneJobRow.backend_job_name)).scalars())
    engine.dispose()
    for job_id, got in ledger.got.items():
        if got != job_id:
            problems.append(f"GET /v0/finetune/{job_id} answered {got}")

    kw: dict[str, Any] = {"region_name": REGION, "endpoint_url": moto_url}
    s3 = boto3.client("s3", **kw)
    keys: set[str] = set()
    for listing in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys.update(obj["Key"] for obj in listing.get("Contents", []))
    for ds_id, tenant, row_counts in ds_rows:
        prefix = f"{tenant}/datasets/{ds_id}/"
        want = {prefix + "manifest.json"} | {f"{prefix}{s}.jsonl" for s, n in row_counts.items() if n > 0}
        if "train" not in row_counts or "validation" not in row_counts:
            problems.append(f"{ds_id}: row counts {row_counts} lack train/validation")
        if want - keys:
            problems.append(f"{ds_id}: missing objects {sorted(want - keys)}")
    owned = {f"{t}/datasets/{d}/" for d, t, _ in ds_rows}
    orphans = sorted(k for k in keys if "/datasets/" in k and k[: k.rindex("/") + 1] not in owned)
    if orphans:
        problems.append(f"{len(orphans)} dataset objects without a row: {orphans[:5]}")
    sm = boto3.client("sagemaker", **kw)
    names: set[str] = set()
    for page in sm.get_paginator("list_training_jobs").paginate(PaginationConfig={"PageSize": 100}):
        names.update(j["TrainingJobName"] for j in page["TrainingJobSummaries"])
    if job_names - names:
        problems.append(
            f"{len(job_names - names)} jobs have no SageMaker training job: "
            f"{sorted(str(n) for n in job_names - names)[:5]}"
        )
    if names - job_names:
        problems.append(f"{len(names - job_names)} SageMaker training jobs without a row")
    return problems


def check_bare(db_url: str, ledger: Ledger) -> list[str]:
    from sqlalchemy import create_engine, select

    meta = bare_tables()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        ds = set(conn.execute(select(meta.tables["bare_datasets"].c.id)).scalars())
        table = meta.tables["bare_jobs"]
        jobs: dict[str, str] = {
            str(k): str(v) for k, v in conn.execute(select(table.c.idempotency_key, table.c.id))
        }
    engine.dispose()
    want_ds = {d for per in ledger.datasets.values() for d in per}
    want_jobs = {k: v for per in ledger.jobs.values() for k, v in per.items()}
    problems = []
    if ds != want_ds:
        problems.append(f"baseline datasets: {len(want_ds - ds)} lost, {len(ds - want_ds)} extra")
    if jobs != want_jobs:
        problems.append(
            f"baseline jobs: {len(want_jobs.keys() - jobs.keys())} lost, "
            f"{len(jobs.keys() - want_jobs.keys())} extra"
        )
    return problems


# -- report --------------------------------------------------------------------------------------
def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summary(ledger: Ledger) -> dict[str, tuple[int, float, float, float, float]]:
    """op -> (requests, req/s, p50 ms, p95 ms, p99 ms); "all" pools the three."""
    out = {}
    for op in (*OPS, "all"):
        lat = [v for o in OPS for v in ledger.latencies[o]] if op == "all" else ledger.latencies[op]
        rps = len(lat) / ledger.elapsed if ledger.elapsed else 0.0
        out[op] = (len(lat), rps, pct(lat, 50) * 1000, pct(lat, 95) * 1000, pct(lat, 99) * 1000)
    return out


def report(ledgers: dict[str, Ledger], peaks: dict[str, dict[str, int]]) -> None:
    labels = {"bare": "bare FastAPI + INSERT", "api": "fastuner API"}
    stats = {t: summary(ledger) for t, ledger in ledgers.items()}
    print(
        f"    {'target':<22}{'op':<8}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'p99 ms':>9}{'errors':>8}"
    )
    for target, ledger in ledgers.items():
        errs = Counter(e.split(":", 1)[0] for e in ledger.errors)
        for op, (n, rps, p50, p95, p99) in stats[target].items():
            e = sum(errs.values()) if op == "all" else errs.get(op, 0)
            print(f"    {labels[target]:<22}{op:<8}{n:>9}{rps:>9.1f}{p50:>9.1f}{p95:>9.1f}{p99:>9.1f}{e:>8}")
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(ledger.cpu.items()))
        pk = peaks.get(f"load-{target}/rounds", {})
        print(
            f"    {'':<22}wall {ledger.elapsed:.1f} s; CPU s: {cpu}; PostgreSQL connections (peak): "
            f"{pk.get('open', 0)} open, {pk.get('busy', 0)} busy, {pk.get('lock', 0)} waiting on a lock"
        )
    if "bare" in stats and "api" in stats:
        a, b = stats["api"], stats["bare"]
        print(
            f"    ratio api / bare: throughput {a['all'][1] / b['all'][1]:.3f}, "
            f"p50 {a['all'][2] / b['all'][2]:.2f}, p99 {a['all'][4] / b['all'][4]:.2f}; "
            + ", ".join(f"{op} p99 {a[op][4] / b[op][4]:.1f}" for op in OPS)
        )


# -- PostgreSQL connections, sampled ------------------------------------------------------------
class PgSampler(threading.Thread):
    """Polls ``pg_stat_activity`` of one database every 50 ms: peak connections per
    ``application_name`` (open; busy = in a statement or a transaction; waiting on a lock)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.peaks: dict[str, dict[str, int]] = {}  # "application_name/phase" -> peaks
        self.phase = "setup"
        self.stop = threading.Event()

    def run(self) -> None:
        from sqlalchemy import create_engine, make_url, text

        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")  # a fresh snapshot per query
        query = text(
            "SELECT application_name, state, wait_event_type FROM pg_stat_activity "
            "WHERE datname = :db AND pid <> pg_backend_pid()"
        )
        try:
            with engine.connect() as conn:
                while not self.stop.wait(0.05):
                    now: dict[str, Counter[str]] = {}
                    for app, state, wait in conn.execute(query, {"db": make_url(self.url).database}):
                        c = now.setdefault(app or "?", Counter())
                        c["open"] += 1
                        c["busy"] += state in ("active", "idle in transaction")
                        c["lock"] += wait == "Lock"
                    for app, c in now.items():
                        peak = self.peaks.setdefault(
                            f"{app}/{self.phase}", dict.fromkeys(("open", "busy", "lock"), 0)
                        )
                        for k in peak:
                            peak[k] = max(peak[k], c[k])
        finally:
            engine.dispose()


def with_app_name(url: str, name: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).update_query_dict({"application_name": name}).render_as_string(hide_password=False)


# -- quota admission under contention ------------------------------------------------------------
async def quota_phase(
    url: str, client: Client, n: int, run: str, rows: list[dict[str, str]], timeout: float, ledger: Ledger
) -> tuple[int, int]:
    """``n`` clients of one tenant upload, then start jobs all at once: (admitted, 429s)."""
    names = [f"load-{run}-quota-c{i}" for i in range(n)]
    https = open_clients(url, [client] * n, timeout)
    try:
        ids = await asyncio.gather(
            *(
                upload(h, client, ledger, name, payload(client, name, rows))
                for h, name in zip(https, names, strict=True)
            )
        )
    finally:
        await close_all(https)
    https = open_clients(url, [client] * n, timeout)  # fresh connections (see drive())
    try:
        answers = await asyncio.gather(
            *(
                start(h, client, ledger, f"{name}-{secrets.token_hex(4)}", ds, expected=frozenset({429}))
                for h, name, ds in zip(https, names, ids, strict=True)
                if ds is not None
            )
        )
    finally:
        await close_all(https)
    rejected = [r for r in answers if r is not None and r.status_code == 429]
    for r in rejected:
        if r.json().get("details", {}).get("limit") != "max_concurrent_jobs":
            ledger.errors.append(f"start: 429 for another reason: {r.text[:300]}")
    return sum(1 for r in answers if r is not None and r.is_success), len(rejected)


# -- main ------------------------------------------------------------------------------------------
def setup_tenants(db_url: str, quotas: dict[str, int]) -> dict[str, str]:
    """Migrate, then tenants with these job quotas and one API key each: tenant -> key."""
    from api.db.session import Database
    from api.domain.tenants import Quotas
    from api.services.auth import AuthService
    from api.services.tenants import TenantService
    from api.settings import Settings

    db = Database(db_url)
    try:
        db.migrate()
        tenants = TenantService(db, Settings(database_url=db_url))
        auth = AuthService(db)
        keys = {}
        for tenant, limit in quotas.items():
            keys[tenant] = auth.create_key(tenant, name="load bench").secret  # creates the tenant
            tenants.set_quotas(tenant, Quotas(max_concurrent_jobs=limit))
        bare_tables().create_all(db.engine)
        return keys
    finally:
        db.dispose()


def api_env(env: dict[str, str], work: Path, db_url: str, moto_url: str) -> dict[str, str]:
    return dict(
        env,
        FASTUNER_HOME=str(work / "home"),
        FASTUNER_DATABASE_URL=with_app_name(db_url, "load-api"),
        FASTUNER_BACKEND="sagemaker",
        FASTUNER_STORE="s3",
        FASTUNER_S3_BUCKET=BUCKET,
        FASTUNER_S3_ENDPOINT_URL=moto_url,
        AWS_ENDPOINT_URL=moto_url,  # the sagemaker and logs clients (botocore reads it)
        FASTUNER_AWS_REGION=REGION,
        FASTUNER_TRAINING_IMAGE_URI=IMAGE_URI,
        FASTUNER_INFERENCE_IMAGE_URI=INFERENCE_IMAGE_URI,
        FASTUNER_SAGEMAKER_ROLE_ARN=ROLE_ARN,
        FASTUNER_BACKGROUND_TASKS="false",
        FASTUNER_BOOTSTRAP_API_KEY="false",
        FASTUNER_LOG_LEVEL="WARNING",
    )


def sample_rows(n: int) -> list[dict[str, str]]:
    with open(SAMPLE, encoding="utf-8") as fh:
        sample = [json.loads(line) for line in fh if line.strip()]
    if n <= len(sample):
        return sample[:n]
    return [{"input": f"{r['input']} {i}", "target": f"{r['target']} {i}"}
            for i, r in ((i, sample[i % len(sample)]) for i in range(n))]  # fmt: skip


def drive(
    args: argparse.Namespace,
    urls: dict[str, str],
    clients: list[Client],
    ledgers: dict[str, Ledger],
    run: str,
    rows: list[dict[str, str]],
    sampler: PgSampler,
) -> None:
    """Warm-up, then ``args.rounds`` timed rounds per target, alternating which goes first.

    Every round opens fresh connections (outside the timed part): an idle keep-alive connection
    kept from the previous round could be closed by the server just as a request goes out on it
    (uvicorn's 5 s keep-alive timer), which is a client-side race, not what is measured here.
    """
    loop = asyncio.new_event_loop()

    def one(target: str, subset: list[Client], ledger: Ledger, tag: str, rnd: int) -> float:
        https = open_clients(urls[target], subset, args.timeout)
        try:
            data = [payload(c, f"{tag}-c{c.index}-r{rnd}", rows) for c in subset]
            return measure(loop, target, https, subset, ledger, tag, rnd, data)
        finally:
            loop.run_until_complete(close_all(https))

    try:
        sampler.phase = "warm-up"
        for target, ledger in ledgers.items():  # first-call costs (imports, moto's lazy backends)
            warm = Ledger()
            one(target, clients[:20], warm, f"{run}-{target}-warm", 0)
            ledger.absorb(warm)
        sampler.phase = "rounds"
        for rnd in range(args.rounds):
            for target in [t for t in (["bare", "api"] if rnd % 2 == 0 else ["api", "bare"]) if t in ledgers]:
                secs = one(target, clients, ledgers[target], f"{run}-{target}", rnd)
                errs = len(ledgers[target].errors)
                print(
                    f"  round {rnd + 1}/{args.rounds} {target:<4}: {secs:6.1f} s, {errs} errors so far",
                    flush=True,
                )
    finally:
        loop.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=200, help="concurrent clients (default 200)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per target, alternating (default 2)")
    p.add_argument("--tenants", type=int, default=10, help="clients are spread over this many (default 10)")
    p.add_argument("--rows", type=int, default=120, help="rows per uploaded dataset (>= 100; default 120)")
    p.add_argument(
        "--dup-fraction", type=float, default=0.1,
        help="share of clients that send each start twice at once with one Idempotency-Key (default 0.1)",
    )  # fmt: skip
    p.add_argument(
        "--quota-clients", type=int, default=40,
        help="after the rounds: this many clients of one more tenant start jobs at once (0: skip; default 40)",
    )  # fmt: skip
    p.add_argument(
        "--quota-limit", type=int, default=8,
        help="that tenant's max_concurrent_jobs: exactly this many must be admitted, the rest 429 (default 8)",
    )  # fmt: skip
    p.add_argument(
        "--db-url",
        help="a PostgreSQL server's SQLAlchemy URL (default: start one with scripts/postgres.sh); "
        "the bench creates a throw-away database on it and drops it afterwards",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="per-request client timeout, s (default 300)")
    p.add_argument("--skip-baseline", action="store_true", help="only the fastuner API")
    p.add_argument("--keep", action="store_true", help="keep the work directory and the database")
    p.add_argument("--serve", choices=["api", "bare"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    if args.rows < 100:
        p.error("--rows must be >= 100 (the API's min_unique_rows)")
    if args.clients < 1 or args.tenants < 1 or args.rounds < 1:
        p.error("--clients, --tenants and --rounds must be >= 1")

    started = time.monotonic()
    run = secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix="fastuner-load-bench-"))
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    os.environ.update(aws)  # the checks' boto3 clients too
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTUNER_", "AWS_ENDPOINT_URL"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    rows = sample_rows(args.rows)
    ledgers: dict[str, Ledger] = {"bare": Ledger(), "api": Ledger()}
    if args.skip_baseline:
        del ledgers["bare"]
    problems: list[str] = []
    quota: tuple[int, int] | None = None
    quota_ledger = Ledger()
    try:
        with (
            scratch_database(postgres_server(args.db_url), f"fastuner_load_{run}", args.keep) as db_url,
            moto(work, env) as moto_url,
        ):
            import boto3

            boto3.client("s3", region_name=REGION, endpoint_url=moto_url).create_bucket(Bucket=BUCKET)
            names = [f"load-{run}-t{i:02d}" for i in range(args.tenants)]
            quota_tenant = f"load-{run}-quota"
            limits = dict.fromkeys(names, args.clients * (args.rounds + 1)) | {quota_tenant: args.quota_limit}
            keys = setup_tenants(db_url, limits)
            n_dup = round(args.clients * args.dup_fraction)
            clients = [
                Client(i, names[i % len(names)], keys[names[i % len(names)]], dup=i % args.clients < n_dup)
                for i in range(args.clients)
            ]
            print(
                f"Fastuner under load ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}): {args.clients} "
                f"clients over {len(names)} tenants, {args.rounds} timed round(s) per target of upload "
                f"({args.rows} rows) → start ({n_dup} clients send it twice at once) → get; PostgreSQL "
                f"{make_url_host(db_url)}, S3 + SageMaker on moto_server; work dir {work}"
            )
            sampler = PgSampler(db_url)
            sampler.start()
            bare_env = dict(env, FASTUNER_DATABASE_URL=with_app_name(db_url, "load-bare"))
            try:
                with (
                    server("api", work, api_env(env, work, db_url, moto_url)) as api_url,
                    server("bare", work, bare_env) if "bare" in ledgers else nullcontext("") as bare_url,
                ):
                    drive(args, {"api": api_url, "bare": bare_url}, clients, ledgers, run, rows, sampler)
                    if args.quota_clients:
                        sampler.phase = "quota"
                        qc = Client(-1, quota_tenant, keys[quota_tenant])
                        quota_ledger = q = Ledger()
                        quota = asyncio.run(
                            quota_phase(api_url, qc, args.quota_clients, run, rows, args.timeout, q)
                        )
                        ledgers["api"].absorb(q)
            finally:
                sampler.stop.set()
                sampler.join()
            report(ledgers, sampler.peaks)
            tenants = [*names, quota_tenant]
            problems += check_api(db_url, moto_url, ledgers["api"], tenants)
            if "bare" in ledgers:
                problems += check_bare(db_url, ledgers["bare"])
        if quota is not None:
            admitted, rejected = quota
            pk = sampler.peaks.get("load-api/quota", {})
            lat = quota_ledger.latencies["start"]
            print(
                f"    quota: {args.quota_clients} starts at once by a tenant with max_concurrent_jobs "
                f"{args.quota_limit}: {admitted} admitted, {rejected} answered 429 (expected, not errors); "
                f"start p50 {pct(lat, 50) * 1000:.0f} ms, p99 {pct(lat, 99) * 1000:.0f} ms; "
                f"PostgreSQL connections (peak): {pk.get('open', 0)} open, {pk.get('busy', 0)} busy, "
                f"{pk.get('lock', 0)} waiting on the tenant's admission lock"
            )
            if admitted != min(args.quota_limit, args.quota_clients):
                problems.append(
                    f"quota: {admitted} jobs admitted, want {min(args.quota_limit, args.quota_clients)}"
                )
        for target, ledger in ledgers.items():
            problems += [f"{target}: {m}" for m in ledger.dup_mismatch]
            problems += [f"{target} error: {err}" for err in ledger.errors[:10]]
            if len(ledger.errors) > 10:
                problems.append(f"{target}: {len(ledger.errors) - 10} more errors")
        if problems:
            print("FAILED:")
            for line in problems:
                print(f"    {line}")
        else:
            api = ledgers["api"]
            n_ds = sum(len(v) for v in api.datasets.values())
            n_jobs = sum(len(v) for v in api.jobs.values())
            print(
                f"checks passed: 0 errors; PostgreSQL holds exactly the {n_ds} datasets and {n_jobs} jobs the "
                f"API answered, per tenant (0 lost, 0 duplicated; {api.dup_pairs} double starts got one job "
                "each); every job has its SageMaker training job, every dataset its S3 splits + manifest; "
                "the baseline's rows match too"
            )
        print(f"done in {time.monotonic() - started:.0f} s (load average now {os.getloadavg()[0]:.1f})")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if problems:
        raise SystemExit(1)


def make_url_host(url: str) -> str:
    from sqlalchemy import make_url

    u = make_url(url)
    return f"{u.host}:{u.port}/{u.database}"


if __name__ == "__main__":
    main()
