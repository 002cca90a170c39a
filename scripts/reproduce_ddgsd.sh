#!/usr/bin/env bash
# DDGSD (Xu & Liu, AAAI 2019): CIFAR-100 ResNet-18 with and without self-distillation, three
# seeds, then the table beside the paper's Table 3 figures.
#   scripts/reproduce_ddgsd.sh [kdrun overrides, e.g. dataset.root=~/data/cifar100]
# The table lands in outputs/reproduce/ddgsd/table.md (set OUT to change the folder).
set -euo pipefail
OUT=${OUT:-outputs/reproduce/ddgsd}
kdrun -m experiment=ddgsd_cifar100 "hydra.sweep.dir=$OUT" "$@"
kdrun-report "$OUT" --out "$OUT/table.md"
