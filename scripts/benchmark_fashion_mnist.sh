#!/usr/bin/env bash
# The Fashion-MNIST benchmark of ssal: supervised AL vs SimCLR -> FixMatch AL over strategies and
# seeds (recipes/compare/fashion_mnist.yaml), or its quick preset (--quick, under 30 minutes on
# 2 CPU cores). Writes results.csv, summary.md, curves.png and aubc.png in the output directory.
# Killing it and running the same command again completes only the missing cells.
#
#   bash scripts/benchmark_fashion_mnist.sh --quick            # ~30 min on 2 cores
#   bash scripts/benchmark_fashion_mnist.sh                    # the full preset, overnight
#   bash scripts/benchmark_fashion_mnist.sh --quick --out DIR train.steps=50   # any ssal compare argument
set -euo pipefail
source "$(dirname "$0")/env.sh"
spec=recipes/compare/fashion_mnist.yaml
jobs=2
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) spec=recipes/compare/fashion_mnist_quick.yaml ;;
        --jobs) jobs="$2"; shift ;;
        --jobs=*) jobs="${1#--jobs=}" ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) args+=("$1") ;;
    esac
    shift
done
ssal_ensure_venv ""
if ! printf '%s\n' "${args[@]+"${args[@]}"}" | grep -q '^data.root='; then
    ssal_ensure_fashion_mnist
fi
cd "$ssal_root"
start=$SECONDS
status=0
.venv/bin/ssal compare "$spec" --jobs "$jobs" "${args[@]+"${args[@]}"}" || status=$?
echo "benchmark: $spec, $((SECONDS - start)) s, exit status $status" >&2
exit $status
