"""Control-plane overhead: submit-to-first-step latency, and GET latency under concurrent clients.

    python benchmarks/submit_latency.py                       # defaults: about 2 minutes on 2 cores
    python benchmarks/submit_latency.py --repeats 5 --requests 5000 --rounds 3

(a) ``POST /v0/finetune`` on the local backend (the real app under uvicorn on loopback, a tiny
    model built with ``scu.tiny.build_tiny_model``) until the engine prints its first
    ``[scu] step=`` line, split into launch (the POST's latency), start → engine process running
    (POST + the job supervisor; the engine's start time read from /proc) and engine process →
    first step, plus the engine's CPU seconds until then (less sensitive to other load on the
    machine than wall time) and the time until the step is visible at
    ``GET /v0/finetune/{id}/metrics``. Baseline in the same run: ``python -m scu.entry train``
    started directly on a copy of the same prepared ``/opt/ml`` root (same hyperparameters, same
    channel files, no control plane). The first step is detected the same way for both: polling
    the process's log file every 5 ms. Each run is stopped after its first step; the order of the
    two kinds alternates between repeats; medians are reported.
(b) ``GET /v0/finetune/{id}`` p50/p99 under ``--clients`` concurrent keep-alive clients (httpx,
    asyncio) against the real app, beside a bare FastAPI app whose one ``def`` endpoint returns
    the same JSON body, served the same way (uvicorn subprocess, loopback, access log off).
    Rounds alternate between the two; latencies are pooled per target.

The servers run in subprocesses on 127.0.0.1 and free ports; nothing leaves the machine. Clients
and servers share the machine's cores, so absolute figures depend on it; the ratios are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/submit_latency.py` from anywhere
    sys.path.insert(0, str(REPO))

from benchmarks.servers import SERVER_PIDS, free_port, proc_cpu, proc_stat, process  # noqa: E402

SAMPLE = REPO / "examples" / "uppercase.jsonl"
STEP_MARK = b"[scu] step="
POLL_S = 0.005
TIMEOUT_S = 300.0
AUTH: dict[str, str] = {}  # the API's local key (FASTUNER_HOME/api_key), sent to both targets alike


# -- servers (each runs in its own subprocess: ``submit_latency.py --serve api|bare``) ----------
def serve(kind: str, port: int, body: str | None) -> None:
    import uvicorn

    if kind == "api":
        from api.app import create_app

        app = create_app()
    else:
        from fastapi import FastAPI

        payload: dict[str, Any] = json.loads(Path(body or "").read_text())
        app = FastAPI()

        @app.get("/healthz")
        def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/v0/finetune/{job_id}")
        def get_job(job_id: str) -> dict[str, Any]:
            return payload

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "containers" / "training"), str(REPO), env.get("PYTHONPATH", "")]
    )
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@contextmanager
def server(kind: str, work: Path, env: dict[str, str], body: Path | None = None) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--port", str(port)]
    if body is not None:
        cmd += ["--body", str(body)]
    url = f"http://127.0.0.1:{port}"
    with process(kind, cmd, work, env, url + "/healthz"):
        yield url


# -- (a) submit → first step ---------------------------------------------------------------------
def wait_for_step(log: Path, proc: subprocess.Popen[bytes] | None = None) -> float:
    """Wall time at which the first ``[scu] step=`` line appeared in ``log`` (polled)."""
    deadline = time.monotonic() + TIMEOUT_S
    seen = b""
    offset = 0
    while time.monotonic() < deadline:
        if log.is_file():
            with log.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            if chunk:
                offset += len(chunk)
                seen = (seen + chunk)[-4096:]
                if STEP_MARK in seen:
                    return time.time()
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(POLL_S)
    tail = log.read_text(errors="replace")[-3000:] if log.is_file() else "(no log)"
    raise SystemExit(f"no training step in {log}:\n{tail}")


def proc_start(pid: int) -> float:
    """Wall-clock time at which process ``pid`` started (from /proc; 1/CLK_TCK resolution).

    The kernel truncates the start time to whole ticks; half a tick is added back to centre it.
    """
    tick = 1 / os.sysconf("SC_CLK_TCK")
    started = int(proc_stat(pid)[19]) * tick + tick / 2  # field 22: starttime, ticks since boot
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started)


def child_of(pid: int) -> int:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(kids) != 1:
        raise SystemExit(f"expected one training process under the supervisor {pid}, found {kids}")
    return int(kids[0])


def control_plane_run(
    client: httpx.Client, home: Path, dataset_id: str, model: Path, hp: dict[str, Any]
) -> tuple[dict[str, float], Path]:
    body = {"dataset_id": dataset_id, "base_model": str(model), "max_steps": hp["max_steps"],
            "hyperparameters": {k: v for k, v in hp.items() if k != "max_steps"}}  # fmt: skip
    api_cpu = proc_cpu(SERVER_PIDS["api"])
    t0 = time.time()
    resp = client.post("/v0/finetune", json=body)
    t1 = time.time()
    if resp.status_code != 201:
        raise SystemExit(f"POST /v0/finetune failed: {resp.status_code} {resp.text}")
    job = resp.json()
    root = home / "work" / "jobs" / job["backend_job_name"]
    t_step = wait_for_step(root / "logs.txt")
    # The supervisor (api.backends.local_runner) is the launched pid; the engine is its child.
    runner = int(json.loads((root / "launch.json").read_text())["pid"])
    engine = child_of(runner)
    cpu = proc_cpu(engine)
    api_cpu = proc_cpu(SERVER_PIDS["api"]) - api_cpu
    t_engine = proc_start(engine)
    while not client.get(f"/v0/finetune/{job['id']}/metrics").json():
        if time.time() - t0 > TIMEOUT_S:
            raise SystemExit("the first step never became visible in the API")
        time.sleep(0.01)
    t_api = time.time()
    client.post(f"/v0/finetune/{job['id']}/cancel")
    while client.get(f"/v0/finetune/{job['id']}").json()["status"] not in (
        "cancelled",
        "completed",
        "failed",
    ):
        time.sleep(0.1)
    times = {
        "launch": t1 - t0,
        "to_engine": t_engine - t0,
        "engine_to_step": t_step - t_engine,
        "total": t_step - t0,
        "engine_cpu": cpu,
        "api_cpu": api_cpu,
        "api": t_api - t0,
    }
    return times, root


def direct_run(prepared: Path, work: Path, index: int, env: dict[str, str]) -> dict[str, float]:
    """``python -m scu.entry train`` on a fresh copy of the prepared root's inputs."""
    root = work / f"direct-{index}"
    shutil.copytree(prepared / "input", root / "input")
    for sub in ("model", "checkpoints", "output/data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    log = root / "logs.txt"
    api_cpu = proc_cpu(SERVER_PIDS["api"])  # idle here, but running: the same machine as the other runs
    with log.open("ab") as fh:
        t0 = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "scu.entry", "train"],
            stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, cwd=root,
            env=dict(env, OPT_ML_ROOT=str(root), PYTHONUNBUFFERED="1"),
        )  # fmt: skip
    try:
        t_step = wait_for_step(log, proc)
        cpu = proc_cpu(proc.pid)
        api_cpu = proc_cpu(SERVER_PIDS["api"]) - api_cpu
        t_engine = proc_start(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "to_engine": t_engine - t0,
        "engine_to_step": t_step - t_engine,
        "total": t_step - t0,
        "engine_cpu": cpu,
        "api_cpu": api_cpu,
    }


def bench_submit(
    args: argparse.Namespace, url: str, home: Path, work: Path, env: dict[str, str], model: Path
) -> tuple[dict[str, list[float]], dict[str, list[float]], str]:
    hp = {"max_steps": args.steps, "log_every": 1, "checkpoint_every": 10_000}
    cp: dict[str, list[float]] = {}
    direct: dict[str, list[float]] = {}
    with httpx.Client(base_url=url, timeout=120, headers=AUTH) as client, SAMPLE.open("rb") as fh:
        resp = client.post("/v0/datasets", data={"name": "bench"}, files={"file": (SAMPLE.name, fh)})
        if resp.status_code != 201:
            raise SystemExit(f"dataset upload failed: {resp.status_code} {resp.text}")
        dataset_id = resp.json()["id"]
        prepared: Path | None = None
        for i in range(args.repeats):
            # Alternate which kind goes first (load on the machine drifts); every direct run copies
            # the inputs the first control-plane run prepared.
            order = ["cp", "direct"] if i % 2 == 0 or prepared is None else ["direct", "cp"]
            for kind in order:
                if kind == "cp":
                    times, root = control_plane_run(client, home, dataset_id, model, hp)
                    prepared = prepared or root
                    into = cp
                else:
                    assert prepared is not None
                    times = direct_run(prepared, work, i, env)
                    into = direct
                for key, value in times.items():
                    into.setdefault(key, []).append(value)
            print(
                f"  run {i + 1}/{args.repeats}: control plane {cp['total'][-1]:.2f} s "
                f"(launch {cp['launch'][-1] * 1000:.0f} ms, engine up after {cp['to_engine'][-1] * 1000:.0f} ms), "
                f"direct {direct['total'][-1]:.2f} s (engine up after {direct['to_engine'][-1] * 1000:.0f} ms)",
                flush=True,
            )
        jobs = client.get("/v0/finetune", params={"limit": 1}).json()["items"]
        job_id = jobs[0]["id"]
    return cp, direct, job_id


# -- (b) GET latency under concurrent clients ------------------------------------------------------
async def load(
    url: str, clients: int, requests: int, max_seconds: float, warmup: int
) -> tuple[list[float], float]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60, headers=AUTH) as client:
        await asyncio.gather(*(client.get(url) for _ in range(max(warmup, clients))))
        latencies: list[float] = []
        started = time.perf_counter()
        deadline = started + max_seconds
        issued = 0

        async def worker() -> None:
            nonlocal issued
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                t = time.perf_counter()
                resp = await client.get(url)
                latencies.append(time.perf_counter() - t)
                if resp.status_code != 200:
                    raise SystemExit(f"GET {url}: {resp.status_code} {resp.text[:300]}")

        await asyncio.gather(*(worker() for _ in range(clients)))
        return latencies, time.perf_counter() - started


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def bench_get(args: argparse.Namespace, api_url: str, job_id: str, work: Path, env: dict[str, str]) -> None:
    body = httpx.get(f"{api_url}/v0/finetune/{job_id}", timeout=30, headers=AUTH).json()
    body_file = work / "job.json"
    body_file.write_text(json.dumps(body))
    print(
        f"(b) GET /v0/finetune/{{id}}: {args.clients} clients, {args.requests} requests x "
        f"{args.rounds} rounds per target (<= {args.max_seconds:g} s each); body {len(json.dumps(body))} B"
    )
    results: dict[str, list[float]] = {"bare": [], "api": []}
    elapsed: dict[str, float] = {"bare": 0.0, "api": 0.0}
    with server("bare", work, env, body_file) as bare_url:
        urls = {"bare": f"{bare_url}/v0/finetune/{job_id}", "api": f"{api_url}/v0/finetune/{job_id}"}
        for r in range(args.rounds):
            order = ["bare", "api"] if r % 2 == 0 else ["api", "bare"]
            for target in order:
                lat, secs = asyncio.run(
                    load(urls[target], args.clients, args.requests, args.max_seconds, warmup=200)
                )
                results[target] += lat
                elapsed[target] += secs
    print(f"    {'':<22}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'requests':>10}")
    stats = {}
    for target, label in (("bare", "bare FastAPI endpoint"), ("api", "fastuner API")):
        lat = results[target]
        stats[target] = (pct(lat, 50) * 1000, pct(lat, 99) * 1000, len(lat) / elapsed[target])
        p50, p99, rps = stats[target]
        print(f"    {label:<22}{p50:>10.2f}{p99:>10.2f}{rps:>10.0f}{len(lat):>10}")
    ratio = [stats["api"][i] / stats["bare"][i] for i in range(3)]
    print(f"    {'ratio api / bare':<22}{ratio[0]:>10.2f}{ratio[1]:>10.2f}{ratio[2]:>10.2f}")


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="(a) runs of each kind (default 3)")
    p.add_argument(
        "--steps", type=int, default=50, help="(a) max_steps of each run (it is stopped at step 1)"
    )
    p.add_argument("--clients", type=int, default=32, help="(b) concurrent clients (default 32)")
    p.add_argument("--requests", type=int, default=1500, help="(b) requests per round per target")
    p.add_argument("--rounds", type=int, default=2, help="(b) alternating rounds per target (default 2)")
    p.add_argument("--max-seconds", type=float, default=10.0, help="(b) cap on one round's duration")
    p.add_argument(
        "--reconcile-interval", type=float, default=0.25, help="the API's reconciler period (default 0.25 s)"
    )
    p.add_argument("--skip-submit", action="store_true", help="only (b)")
    p.add_argument("--skip-get", action="store_true", help="only (a)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--serve", choices=["api", "bare"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--body", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.body)
        return

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="fastuner-submit-bench-"))
    home = work / "home"
    env = base_env()
    api_env = dict(
        env,
        FASTUNER_HOME=str(home),
        FASTUNER_RECONCILE_INTERVAL_SECONDS=str(args.reconcile_interval),
        FASTUNER_BACKEND="local",
        FASTUNER_STORE="local",
        FASTUNER_LOG_LEVEL="INFO",
    )
    for key in ("FASTUNER_DATABASE_URL", "FASTUNER_STORE_ROOT", "FASTUNER_API_KEYS"):
        api_env.pop(key, None)
    try:
        model = work / "tiny-llama"
        subprocess.run(
            [sys.executable, "-m", "scu.entry", "make-tiny-model", str(model)],
            env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        load1 = os.getloadavg()[0]
        print(f"Fastuner control-plane overhead ({os.cpu_count()} CPUs, load {load1:.1f}; work dir {work})")
        with server("api", work, api_env) as api_url:
            AUTH["Authorization"] = "Bearer " + (home / "api_key").read_text().strip()
            job_id = ""
            if not args.skip_submit:
                print(f"(a) finetune start → first training step, tiny model, {args.repeats} runs each")
                cp, direct, job_id = bench_submit(args, api_url, home, work, env, model)
                med = {k: statistics.median(v) for k, v in cp.items()}
                dmed = {k: statistics.median(v) for k, v in direct.items()}
                rows = [
                    ("launch: POST latency", "launch"),
                    ("start → engine process running", "to_engine"),
                    ("engine process → first step", "engine_to_step"),
                    ("start → first step (total)", "total"),
                    ("engine CPU s until first step", "engine_cpu"),
                    ("API server CPU s until then", "api_cpu"),
                ]
                print(f"    {'median (s)':<34}{'control plane':>14}{'direct entry':>14}{'ratio':>8}")
                for label, key in rows:
                    theirs = f"{'-':>14}"
                    if key in dmed:  # no ratio for a baseline of a few milliseconds
                        ratio = f"{med[key] / dmed[key]:>8.3f}" if dmed[key] > 0.05 else f"{'-':>8}"
                        theirs = f"{dmed[key]:>14.3f}{ratio}"
                    print(f"    {label:<34}{med[key]:>14.3f}{theirs}")
                print(
                    f"    {'first step visible in GET metrics':<34}{med['api']:>14.3f}{'-':>14}{'':>8}"
                    f"   (reconciler every {args.reconcile_interval:g} s)"
                )
                print(
                    f"    control-plane overhead before the engine starts: "
                    f"{med['to_engine'] - dmed['to_engine']:+.3f} s (median); "
                    f"per-run totals: control plane {', '.join(f'{v:.2f}' for v in cp['total'])} s, "
                    f"direct {', '.join(f'{v:.2f}' for v in direct['total'])} s"
                )
            else:
                with SAMPLE.open("rb") as fh:
                    ds = httpx.post(
                        api_url + "/v0/datasets",
                        data={"name": "bench"},
                        files={"file": (SAMPLE.name, fh)},
                        timeout=120,
                    ).json()
                body = {"dataset_id": ds["id"], "base_model": str(model), "max_steps": 1}
                job = httpx.post(api_url + "/v0/finetune", json=body, timeout=120).json()
                job_id = job["id"]

            if not args.skip_get:
                bench_get(args, api_url, job_id, work, env)
        print(f"done in {time.monotonic() - started:.0f} s (load average now {os.getloadavg()[0]:.1f})")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
