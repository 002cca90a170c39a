#!/usr/bin/env bash
# Noise as a Resource (Arani, Sarfraz, Zonooz; arXiv 1910.05057): every table preset end to end
# (the WRN-40-2 teacher is trained once and cached), then each sweep's table.
#   scripts/reproduce_arani.sh [kdrun overrides, e.g. dataset.root=~/data/cifar10]
# Tables land in outputs/reproduce/arani/<preset>/table.md (set OUT to change the folder).
set -euo pipefail
OUT=${OUT:-outputs/reproduce/arani}
for preset in arani_baselines arani_sigma arani_fickle arani_messy arani_corruption; do
  kdrun -m "experiment=$preset" "hydra.sweep.dir=$OUT/$preset" "$@"
  kdrun-report "$OUT/$preset" --out "$OUT/$preset/table.md" \
    --metric test/acc --metric test/best_acc --metric pgd/linf/eps8/acc
done
