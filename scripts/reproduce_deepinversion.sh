#!/usr/bin/env bash
# Dreaming to Distill (Yin et al., arXiv 1912.08795): data-free KD on CIFAR-10, ResNet-34 ->
# ResNet-18, DeepDream / DeepInversion / Adaptive DeepInversion, then the table beside the
# paper's figures. Synthesis is the cost (hours on a GPU): see synthesis.* in conf/config.yaml.
#   scripts/reproduce_deepinversion.sh [kdrun overrides, e.g. dataset.root=~/data/cifar10]
# The table lands in outputs/reproduce/deepinversion/table.md (set OUT to change the folder).
set -euo pipefail
OUT=${OUT:-outputs/reproduce/deepinversion}
kdrun -m experiment=deepinversion_cifar10 "hydra.sweep.dir=$OUT" "$@"
kdrun-report "$OUT" --out "$OUT/table.md" --metric test/acc --metric synth/teacher_acc
