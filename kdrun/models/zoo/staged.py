"""The shape shared by the zoo's CIFAR networks (stem -> stages -> pooled linear head), with
timm's feature contract so methods ask for stage indices rather than module paths."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StagedNet(nn.Module):
    def __init__(self, stem: nn.Module, stages: list[nn.Module], stage_channels: list[int],
                 stage_reductions: list[int], head_norm: nn.Module, num_classes: int,
                 drop_rate: float = 0.0):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head_norm = head_norm  # WRN's final BN-ReLU; identity for post-activation ResNets
        self.drop = nn.Dropout(drop_rate)
        self.num_features = stage_channels[-1]
        self.fc = nn.Linear(self.num_features, num_classes)
        self.feature_info = [
            {"num_chs": c, "reduction": r, "module": f"stages.{i}"}
            for i, (c, r) in enumerate(zip(stage_channels, stage_reductions))
        ]
        _init_weights(self)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head_norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices=None, pre_activation: bool = False,
                              **_):
        """timm's signature: (final feature map, [stage outputs at `indices`]); an int n means
        the last n stages. Stage outputs are the stages' own, before the head norm (timm's
        default, norm=False, and the KD references' `feats`); the final map is after it.
        `pre_activation`: the taken stages' outputs before their last ReLU
        (stage_with_pre_activation)."""
        from timm.models._features import feature_take_indices  # timm: only when used

        take, _ = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if pre_activation and i in take:
                before, x = self.stage_with_pre_activation(i, x)
                intermediates.append(before)
            else:
                x = stage(x)
                if i in take:
                    intermediates.append(x)
        return self.head_norm(x), intermediates

    def stage_with_pre_activation(self, i: int,
                                  x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stage i's output before its last ReLU, its output), as the KD references'
        `preact_feats` (HobbitLong/RepDistiller, megvii-research/mdistiller): the sum before a
        post-activation block's ReLU, a conv group's BN output. A stage of pre-activation
        blocks ends in a sum that no ReLU follows; theirs is then what the next ReLU reads
        (`activation_input`): the next block's first BN, or the head norm's after the last
        stage."""
        before, out = split_last_relu(self.stages[i], x)
        if before is out:
            reader = self.stages[i + 1][0] if i + 1 < len(self.stages) else self.head_norm
            if hasattr(reader, "activation_input"):
                before = reader.activation_input(out)
        return before, out


def split_last_relu(layers: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(`layers`' output before its final ReLU, its output) for the zoo's layer ends: a
    post-activation residual block (`pre_activation` gives its sum before the ReLU), a
    conv-BN-ReLU group, or pre-activation residual blocks, whose output is a sum that no ReLU
    follows (both the same tensor)."""
    *body, end = layers
    for layer in body:
        x = layer(x)
    if hasattr(end, "pre_activation"):
        before = end.pre_activation(x)
        return before, F.relu(before)
    if isinstance(end, nn.ReLU):  # applied out of place: `x` is kept
        return x, F.relu(x)
    out = end(x)
    return out, out


class NormAct(nn.Sequential):
    """BN then ReLU after a network's last pre-activation block (WRN's head norm)."""

    def __init__(self, channels: int):
        super().__init__(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def activation_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the ReLU reads, BN(x), for the last stage's pre-activation features."""
        return batch_norm_without_update(self[0], x)


def batch_norm_without_update(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """`bn(x)` as the forward pass computes it, without moving its running statistics: a
    feature read must not count a batch twice (mdistiller's WRN does, on every forward)."""
    if bn.training:
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                        bn.eps)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def drop_path_rates(final_rate: float, blocks: int) -> list[float]:
    """Stochastic depth with linear decay (Huang et al., arXiv 1603.09382): the drop
    probability of each residual block rises linearly to `final_rate` at the last one."""
    if blocks == 1:
        return [final_rate]
    return [final_rate * i / (blocks - 1) for i in range(blocks)]


def residual_drop(rate: float) -> nn.Module:
    """Drops a residual branch per sample in training (timm's DropPath); identity at 0."""
    if rate == 0:
        return nn.Identity()
    from timm.layers import DropPath  # importing timm costs seconds: only when needed

    return DropPath(rate)
