#!/usr/bin/env bash
# Noisy Student (Xie et al., arXiv 1911.04252) at CIFAR scale: 4,000 CIFAR-10 labels, the rest
# unlabelled, two noised rounds, three seeds; then the table and the per-round curve.
#   scripts/reproduce_noisy_student.sh [kdrun overrides, e.g. dataset.root=~/data/cifar10]
# The table lands in outputs/reproduce/noisy_student/table.md (set OUT to change the folder).
set -euo pipefail
OUT=${OUT:-outputs/reproduce/noisy_student}
kdrun -m experiment=noisy_student_cifar10 "hydra.sweep.dir=$OUT" "$@"
kdrun-report "$OUT" --out "$OUT/table.md" \
  --metric test/acc --metric round0/test/acc --metric round1/test/acc --metric round2/test/acc
