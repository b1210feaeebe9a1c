#!/usr/bin/env bash
# The second command of the README, and what CI runs: set up .venv with .[dev], run the tests.
set -euo pipefail
source "$(dirname "$0")/env.sh"
ssal_ensure_venv "dev"
ssal_ensure_fashion_mnist
ssal_ensure_chromium
cd "$ssal_root"
# Label Studio (for tests/test_label_studio_server.py) installs into .lsvenv beside the first tests (about
# 1-2 min, once); those tests wait for the status this writes, and show the log if it failed
export SSAL_LABEL_STUDIO_INSTALL="$ssal_root/.lsvenv.done"
rm -f "$SSAL_LABEL_STUDIO_INSTALL"
(
    if ssal_ensure_label_studio > .lsvenv.log 2>&1; then status=0; else status=$?; fi
    echo "$status" > "$SSAL_LABEL_STUDIO_INSTALL.tmp" && mv "$SSAL_LABEL_STUDIO_INSTALL.tmp" "$SSAL_LABEL_STUDIO_INSTALL"
) &
exec .venv/bin/python -m pytest -m "" "$@"  # -m "": the slow tests too
