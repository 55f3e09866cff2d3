from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scu.distributed import plan_launch, torchrun_command
from scu.paths import ContractPaths
from scu.tiny import build_tiny_model

from tests.training.support import ENGINE_SRC


def test_tiny_model_is_deterministic_and_about_1m_params(tmp_path: Path, tiny_model: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    again = build_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json"):
        assert (again / name).read_bytes() == (tiny_model / name).read_bytes()
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    assert AutoConfig.from_pretrained(tiny_model).model_type == "llama"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and tok.chat_template
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|assistant|>\n")


@pytest.mark.slow
def test_make_tiny_model_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ENGINE_SRC)}
    out = subprocess.run(
        [sys.executable, "-m", "scu.entry", "make-tiny-model", str(tmp_path / "m")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert (tmp_path / "m" / "config.json").exists() and str(tmp_path / "m") in out.stdout


def test_launch_plan_from_resourceconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = ContractPaths(tmp_path)
    paths.config_dir.mkdir(parents=True)
    monkeypatch.delenv("SM_NUM_GPUS", raising=False)
    assert not plan_launch(paths, None, 29500).needed  # CPU, one host
    paths.resourceconfig.write_text(
        json.dumps(
            {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"], "network_interface_name": "eth0"}
        )
    )
    monkeypatch.setenv("SM_NUM_GPUS", "8")
    plan = plan_launch(paths, None, 29500)
    assert (plan.nnodes, plan.node_rank, plan.nproc_per_node, plan.master_addr) == (2, 1, 8, "algo-1")
    cmd = torchrun_command(plan)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[-3:] == ["-m", "scu.entry", "train"]
    assert {
        "--nnodes=2",
        "--node_rank=1",
        "--master_addr=algo-1",
        "--master_port=29500",
        "--nproc_per_node=8",
    } <= set(cmd)
    assert plan_launch(paths, 2, 29500).nproc_per_node == 2  # hyperparameter wins
