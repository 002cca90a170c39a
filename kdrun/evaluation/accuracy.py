"""Clean test metrics: top-1/top-5 accuracy, loss (NLL), calibration error, and
student-teacher top-1 agreement, for one or two models in a single pass over the test set
(accuracies in percent)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.evaluation.calibration import calibration_bins
from kdrun.runtime import distributed


class _Tally:
    def __init__(self, device: torch.device):
        self.correct1 = torch.zeros((), device=device)
        self.correct5 = torch.zeros((), device=device)
        self.loss = torch.zeros((), device=device)

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        self.correct1 += (top[:, 0] == labels).sum()
        self.correct5 += (top == labels[:, None]).any(dim=1).sum()
        self.loss += F.cross_entropy(logits, labels, reduction="sum")
        return top[:, 0]

    def metrics(self, n: int, prefix: str) -> dict[str, float]:
        correct1, correct5, loss = distributed.sum_across_ranks(
            torch.stack([self.correct1, self.correct5, self.loss])).tolist()
        return {f"{prefix}acc": 100 * correct1 / n, f"{prefix}top5": 100 * correct5 / n,
                f"{prefix}loss": loss / n}


@torch.inference_mode()
def evaluate(model: nn.Module, loader, autocast_ctx, teacher: nn.Module | None = None,
             bins: int = 15) -> dict[str, float]:
    """Keys: test/acc, test/top5, test/loss, calib/ece (`bins` confidence bins); with a teacher
    also teacher/test/* and test/agreement (the share of test images on which both predict
    the same class). Under torch.distributed every rank must call it, each with its part of
    the test set (`make_loader(shard=True)`): the sums are reduced across ranks."""
    model.eval()
    device = next(model.parameters()).device
    student_tally, teacher_tally = _Tally(device), _Tally(device)
    agree = torch.zeros((), device=device)
    confidence, correct = [], []
    n = 0
    if teacher is not None:
        teacher.eval()
    for images, labels in loader:
        with autocast_ctx():
            logits = model(images).float()
            teacher_logits = teacher(images).float() if teacher is not None else None
        prediction = student_tally.add(logits, labels)
        confidence.append(logits.softmax(dim=1).max(dim=1).values)
        correct.append(prediction == labels)
        if teacher_logits is not None:
            agree += (teacher_tally.add(teacher_logits, labels) == prediction).sum()
        n += len(labels)
    n = int(distributed.sum_across_ranks(torch.tensor(n, device=device)))
    results = student_tally.metrics(n, "test/")
    confidence = distributed.gather(torch.cat(confidence) if confidence else _empty(device))
    correct = distributed.gather(torch.cat(correct) if correct else _empty(device, torch.bool))
    results["calib/ece"] = calibration_bins(confidence, correct, bins)["ece"]
    if teacher is not None:
        results.update(teacher_tally.metrics(n, "teacher/test/"))
        results["test/agreement"] = 100 * distributed.sum_across_ranks(agree).item() / n
    return results


def _empty(device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(0, device=device, dtype=dtype)
