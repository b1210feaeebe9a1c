#!/usr/bin/env bash
# The second command of the README, and what CI runs: set up .venv with .[dev], run the tests.
set -euo pipefail
source "$(dirname "$0")/env.sh"
ssal_ensure_venv "dev"
ssal_ensure_fashion_mnist
ssal_ensure_chromium
cd "$ssal_root"
exec .venv/bin/python -m pytest -m "" "$@"  # -m "": the slow tests too
