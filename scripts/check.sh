#!/usr/bin/env bash
# The static checks CI runs before the tests: formatting, lint, types, and the layer rule of the house plan
# (docs/architecture.md). Run it from anywhere with the venv active; it stops at the first that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff format --check generator tests bench setup.py
ruff check generator tests bench setup.py
mypy
lint-imports
