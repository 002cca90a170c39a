#!/usr/bin/env bash
# AFD (Chung et al., arXiv 2002.01775): the CIFAR-100 pair against DML, and cyclic against
# mutual pairing of three networks, five seeds each, then both tables (student and peers).
#   scripts/reproduce_afd.sh [kdrun overrides, e.g. dataset.root=~/data/cifar100]
# Tables land in outputs/reproduce/afd/<preset>/table.md (set OUT to change the folder).
set -euo pipefail
OUT=${OUT:-outputs/reproduce/afd}
for preset in afd_cifar100 afd_cifar100_cyclic; do
  kdrun -m "experiment=$preset" "hydra.sweep.dir=$OUT/$preset" "$@"
  kdrun-report "$OUT/$preset" --out "$OUT/$preset/table.md" \
    --metric test/acc --metric peer1/test/acc --metric test/best_acc
done
