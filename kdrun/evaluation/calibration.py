"""Calibration: expected calibration error over equal-width confidence bins (Guo et al., arXiv
1706.04599) with the per-bin figures a reliability diagram draws."""

from __future__ import annotations

import torch


def calibration_bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> dict:
    """Per bin of top-1 confidence: count, mean confidence, accuracy; and the ECE in percent.
    `confidence`: each prediction's top-1 probability; `correct`: whether it was right."""
    correct = correct.float()
    edges = torch.linspace(0, 1, n_bins + 1, device=confidence.device)
    index = torch.bucketize(confidence, edges[1:-1])  # bin i holds (e_i, e_i+1]; 0 goes to bin 0
    count = torch.bincount(index, minlength=n_bins).float()
    conf_sum = torch.bincount(index, weights=confidence, minlength=n_bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=n_bins)
    safe = count.clamp_min(1)
    gap = (conf_sum - correct_sum).abs().sum() / len(correct)
    return {"count": count.tolist(), "confidence": (conf_sum / safe).tolist(),
            "accuracy": (correct_sum / safe).tolist(), "ece": 100 * gap.item()}
