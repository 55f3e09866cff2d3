#!/usr/bin/env bash
# The whole check, from a fresh machine: install, lint, type-check, and pytest on SQLite and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh train,dev
# shellcheck disable=SC1091
. .venv/bin/activate
export AWS_EC2_METADATA_DISABLED=true AWS_DEFAULT_REGION=us-east-1
if [ -z "${FASTUNER_TEST_POSTGRES_URL:-}" ]; then
  if url="$(bash scripts/postgres.sh)"; then
    export FASTUNER_TEST_POSTGRES_URL="$url"
  elif [ -n "${CI:-}" ]; then
    echo "PostgreSQL could not be started, and CI requires it" >&2; exit 1
  else
    echo "warning: PostgreSQL unavailable; its tests will be skipped" >&2
  fi
fi
# The console's browser tests (tests/console) drive Debian's chromium through Playwright.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) >&2
  elif [ -n "${CI:-}" ]; then
    echo "chromium is not installed and we are not root" >&2; exit 1
  else
    echo "warning: chromium unavailable; the console's browser tests will be skipped" >&2
  fi
fi
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy
echo "== pytest"; python -m pytest "$@"
