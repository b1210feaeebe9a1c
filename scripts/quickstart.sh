#!/usr/bin/env bash
# The first command of the README: install, get Fashion-MNIST, run recipes/quickstart.yaml.
set -euo pipefail
source "$(dirname "$0")/env.sh"
ssal_ensure_venv ""
ssal_ensure_fashion_mnist
cd "$ssal_root"
start=$SECONDS
.venv/bin/ssal run recipes/quickstart.yaml --force "$@"
out=$(.venv/bin/python -c "from ssal.recipe import load_recipe; import sys; print(load_recipe('recipes/quickstart.yaml', [a for a in sys.argv[1:] if not a.startswith('-')]).output_dir)" "$@")
echo
echo "quickstart finished in $((SECONDS - start)) s"
echo "  curve plot:  $out/curve.png"
echo "  metrics:     $out/metrics.jsonl"
