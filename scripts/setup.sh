#!/usr/bin/env bash
# Everything the project and its tests need on a fresh Debian machine, in one step: the Debian packages
# the tests drive, a virtual environment in .venv, and the project with every extra. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's chromium: the review app's browser tests drive it through Playwright (never `playwright install`).
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade "pip>=24" "setuptools<81" wheel

# llama.cpp (the offline SmolLM2 server) is compiled on install. Built "native", it uses every instruction of
# the build machine (AVX-512, AMX) and pip caches that wheel: on another CPU the server then dies with
# "invalid opcode". So build it portable (AVX2 and below) and never from pip's wheel cache; a marker file
# says this venv's copy is the portable one.
LLAMA="llama-cpp-python[server]==0.3.36"
if [ ! -f .venv/.llama-portable ]; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"
    touch .venv/.llama-portable
fi

pip install torch==2.14.1 torchvision==0.29.1 -e ".[test,local,interop,ray,review]" "$LLAMA"
