"""A published state dict onto kdrun's architecture: each source layout's key names mapped to
kdrun's (the rules below, written from each source's model code), then every key and shape
checked against the kdrun network. A key the rules do not map, a kdrun key nothing maps to, or
a shape that differs is an error naming it: a weight is never silently dropped or left at its
initial value. The one exception is BatchNorm's `num_batches_tracked`, a counter that files
saved before PyTorch 0.4.1 lack (RepDistiller's era) and that evaluation never reads."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from kdrun.errors import KdrunError
from kdrun.models.zoo.vgg import POOLED_BEFORE

Rule = tuple[str, Callable[[re.Match], str]]


def _stage(m: re.Match, rest: str) -> str:
    """`layer<k>.<i>.` (counted from 1) -> kdrun's `stages.<k-1>.<i>.`"""
    return f"stages.{int(m['stage']) - 1}.{m['block']}.{rest}"


# Both WRN layouts' stem conv, final BN (kdrun's head norm) and classifier (rules match whole
# keys, so these never catch a block's own conv1/bn1).
WRN_ENDS: list[Rule] = [
    (r"conv1\.(?P<p>.+)", lambda m: f"stem.{m['p']}"),
    (r"bn1\.(?P<p>.+)", lambda m: f"head_norm.0.{m['p']}"),
    (r"fc\.(?P<p>.+)", lambda m: f"fc.{m['p']}"),
]

LAYOUTS: dict[str, list[Rule]] = {
    # Post-activation ResNets: RepDistiller models/resnet.py and resnetv2.py (ResNet50),
    # chenyaofo pytorch_cifar_models/resnet.py, torchdistill ResNet4Cifar (torchvision's
    # BasicBlock): conv1-bn1 stem, layer1..N of blocks, 1x1 conv + BN projection shortcut
    # named downsample (shortcut in resnetv2.py), linear head fc (linear in resnetv2.py).
    "resnet": [
        (r"conv1\.(?P<p>.+)", lambda m: f"stem.0.{m['p']}"),
        (r"bn1\.(?P<p>.+)", lambda m: f"stem.1.{m['p']}"),
        (r"layer(?P<stage>\d+)\.(?P<block>\d+)\.(?:downsample|shortcut)\.(?P<p>.+)",
         lambda m: _stage(m, f"shortcut.{m['p']}")),
        (r"layer(?P<stage>\d+)\.(?P<block>\d+)\.(?P<p>(?:conv|bn)\d\..+)",
         lambda m: _stage(m, m["p"])),
        (r"(?:fc|linear)\.(?P<p>.+)", lambda m: f"fc.{m['p']}"),
    ],
    # RepDistiller models/wrn.py: conv1, block<k>.layer.<i> pre-activation blocks whose 1x1
    # projection (convShortcut) reads the activated input, a final bn1, fc.
    "wrn": [
        *WRN_ENDS,
        (r"block(?P<stage>\d+)\.layer\.(?P<block>\d+)\.convShortcut\.(?P<p>.+)",
         lambda m: _stage(m, f"shortcut.{m['p']}")),
        (r"block(?P<stage>\d+)\.layer\.(?P<block>\d+)\.(?P<p>(?:conv|bn)\d\..+)",
         lambda m: _stage(m, m["p"])),
    ],
    # torchdistill wide_resnet.py (WideResNet4Cifar): conv1, layer<k>.<i> pre-activation blocks
    # whose projection (shortcut.0) reads the raw input, a final bn1, fc.
    "wrn_sequential": [
        *WRN_ENDS,
        (r"layer(?P<stage>\d+)\.(?P<block>\d+)\.shortcut\.0\.(?P<p>.+)",
         lambda m: _stage(m, f"shortcut.{m['p']}")),
        (r"layer(?P<stage>\d+)\.(?P<block>\d+)\.(?P<p>(?:conv|bn)\d\..+)",
         lambda m: _stage(m, m["p"])),
    ],
    # RepDistiller models/vgg.py: block0..block4 Sequentials of conv(bias)-BN-ReLU, parameter-
    # free pools between them, classifier. kdrun's block0 is the stem; a later group that is
    # max-pooled starts with its pool, so its layer indices are one higher.
    "vgg": [
        (r"block0\.(?P<i>\d+)\.(?P<p>.+)", lambda m: f"stem.{m['i']}.{m['p']}"),
        (r"block(?P<k>[1-4])\.(?P<i>\d+)\.(?P<p>.+)",
         lambda m: f"stages.{int(m['k']) - 1}.{int(m['i']) + POOLED_BEFORE[int(m['k'])]}."
                   f"{m['p']}"),
        (r"classifier\.(?P<p>.+)", lambda m: f"fc.{m['p']}"),
    ],
}
OPTIONAL = "num_batches_tracked"


class ConversionError(KdrunError):
    """A state dict does not fit the architecture its registry entry names."""


def convert(state_dict: dict[str, torch.Tensor], layout: str,
            target: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """`state_dict` (in `layout`'s names) renamed to `target`'s keys, every key and shape
    checked; `what` names the file in errors."""
    rules = [(re.compile(pattern), name) for pattern, name in LAYOUTS[layout]]
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = next((name(m) for pattern, name in rules if (m := pattern.fullmatch(key))), None)
        if new is None or new not in target:
            raise ConversionError(f"{what}: its key {key} ({tuple(value.shape)}) has no place in "
                                  f"kdrun's network (mapped to {new}): the file is not the "
                                  f"{layout} layout its registry entry says")
        if new in converted:
            raise ConversionError(f"{what}: two of its keys map to kdrun's {new}")
        if value.shape != target[new].shape:
            raise ConversionError(f"{what}: {key} has shape {tuple(value.shape)}, kdrun's {new} "
                                  f"{tuple(target[new].shape)}: a different architecture or "
                                  "class count than its registry entry says")
        converted[new] = value.to(target[new].dtype)
    for key, value in target.items():
        if key not in converted:
            if not key.endswith(OPTIONAL):
                raise ConversionError(f"{what}: nothing in it maps to kdrun's {key} "
                                      f"({tuple(value.shape)}): the file lacks weights the "
                                      "architecture has")
            converted[key] = value.clone()
    return converted
