"""Multi-process / multi-node launch through ``torch.distributed.run`` and DDP helpers.

The entry decides whether to re-launch itself: several hosts in ``resourceconfig.json``, or more
than one process per node (``num_processes`` hyperparameter, else ``SM_NUM_GPUS``, else the CUDA
device count). Workers are recognised by the ``LOCAL_RANK`` variable torchrun sets.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from types import FrameType

import torch
import torch.distributed as dist

from scu.paths import EXIT_FAILED, EXIT_INTERRUPTED, ContractPaths

log = logging.getLogger("scu.distributed")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_worker() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed() -> tuple[DistInfo, torch.device]:
    if not is_worker() or int(os.environ["WORLD_SIZE"]) <= 1:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return DistInfo(), device
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
    )
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return info, device


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(x) for x in t.tolist()]


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    if not info.enabled:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0], info, device)[0] > 0


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- launching


@dataclass(frozen=True)
class LaunchPlan:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int

    @property
    def needed(self) -> bool:
        return self.nnodes > 1 or self.nproc_per_node > 1


def plan_launch(paths: ContractPaths, num_processes: int | None, master_port: int) -> LaunchPlan:
    hosts: list[str] = []
    current = ""
    if paths.resourceconfig.exists():
        rc = json.loads(paths.resourceconfig.read_text(encoding="utf-8"))
        hosts = list(rc.get("hosts") or [])
        current = str(rc.get("current_host") or "")
    nnodes = max(1, len(hosts))
    node_rank = hosts.index(current) if current in hosts else 0
    if num_processes is not None:
        nproc = num_processes
    elif os.environ.get("SM_NUM_GPUS", "").isdigit():
        nproc = max(1, int(os.environ["SM_NUM_GPUS"]))
    else:
        nproc = max(1, torch.cuda.device_count())
    master = hosts[0] if nnodes > 1 else "127.0.0.1"
    return LaunchPlan(nnodes, node_rank, nproc, master, master_port)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_command(plan: LaunchPlan) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={plan.nproc_per_node}"]
    if plan.nnodes == 1:
        cmd += ["--nnodes=1", "--node_rank=0", "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    else:
        cmd += [
            f"--nnodes={plan.nnodes}",
            f"--node_rank={plan.node_rank}",
            f"--master_addr={plan.master_addr}",
            f"--master_port={plan.master_port}",
        ]
    return [*cmd, "-m", "scu.entry", "train"]


def launch(paths: ContractPaths, plan: LaunchPlan) -> int:
    """Run torchrun as a child, forward SIGTERM/SIGINT to it, and map its outcome to our exit code."""
    cmd = torchrun_command(plan)
    log.info("launching %s", " ".join(cmd))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // plan.nproc_per_node)))
    proc = subprocess.Popen(cmd, env=env)
    stopped = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopped
        stopped = True
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    status = {}
    if paths.status_file.exists():
        try:
            status = json.loads(paths.status_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            status = {}
    if status.get("status") == "interrupted" or (stopped and rc != 0):
        return EXIT_INTERRUPTED
    if rc != 0:
        if not paths.failure_file.exists():
            paths.write_failure(
                f"Distributed training failed: torchrun exited with status {rc} "
                f"({plan.nnodes} node(s) x {plan.nproc_per_node} process(es)); see the job logs."
            )
        return EXIT_FAILED
    return 0
