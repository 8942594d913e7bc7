#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# Where the dev install includes vLLM's CPU build, its tests must run, not skip.
if [ "$(uname -s)" = Linux ] && [[ "$(uname -m)" =~ ^(x86_64|aarch64)$ ]]; then
  export OSUM_REQUIRE_VLLM=1
fi
exec .venv/bin/python -m pytest -q "$@"
