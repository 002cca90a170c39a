"""Beyond the test set: accuracy on distribution-shifted sets with the training labels
(CINIC-10 for a CIFAR-10 model), and detection of far out-of-distribution sets (SVHN for a
CIFAR-10 model) by three scores, each higher for in-distribution images: the maximum softmax
probability (msp; Hendrycks & Gimpel, arXiv 1610.02136), the maximum logit (maxlogit;
Hendrycks et al., arXiv 1911.11132) and the energy score, the logits' log-sum-exp at
temperature 1 (energy; Liu et al., arXiv 2010.03759). Keys: ood/<set>/acc for shift sets;
ood/<set>/<score>/auroc and ood/<set>/<score>/fpr95 (percent) for far-OOD sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from kdrun.data import ImageData, load_named_dataset, make_loader
from kdrun.errors import ConfigError
from kdrun.runtime.run import Run


def load_eval_sets(eval_cfg: DictConfig, dataset_cfg: DictConfig, cache_dir: str
                   ) -> dict[str, dict[str, ImageData]]:
    """The configured shift and far-OOD sets, loaded when the run starts (a missing one
    fails in seconds, not after training)."""
    return {kind: {name: load_named_dataset(name, root, dataset_cfg, f"eval.{kind}.{name}",
                                            cache_dir)
                   for name, root in eval_cfg[kind].items()}
            for kind in ("shift", "ood")}


def class_mapping(shift_classes: list[str], train_classes: list[str], name: str) -> torch.Tensor:
    """Shift-set label -> training label, matched by class name."""
    missing = [c for c in shift_classes if c not in train_classes]
    if missing:
        raise ConfigError(f"eval.shift.{name}: its classes {missing} are not training classes; "
                          "a shift set must share the training label names (use eval.ood)")
    return torch.tensor([train_classes.index(c) for c in shift_classes])


OOD_SCORES = ("msp", "maxlogit", "energy")


@dataclass
class Predictions:
    classes: torch.Tensor  # top-1 class per image
    labels: torch.Tensor
    scores: dict[str, torch.Tensor]  # OOD_SCORES per image; scores["msp"] is the confidence


def ood_scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"msp": logits.softmax(dim=1).max(dim=1).values,
            "maxlogit": logits.max(dim=1).values,
            "energy": logits.logsumexp(dim=1)}


@torch.inference_mode()
def predictions(model: nn.Module, loader, autocast_ctx) -> Predictions:
    """Every image's top-1 class, label and OOD scores."""
    model.eval()
    classes, labels, scores = [], [], {name: [] for name in OOD_SCORES}
    for images, targets in loader:
        with autocast_ctx():
            logits = model(images).float()
        classes.append(logits.argmax(dim=1))
        labels.append(targets)
        for name, value in ood_scores(logits).items():
            scores[name].append(value)
    return Predictions(torch.cat(classes), torch.cat(labels),
                       {name: torch.cat(values) for name, values in scores.items()})


def ood_detection(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict[str, float]:
    """AUROC and FPR at 95 % TPR (percent) of telling in- from out-of-distribution by score,
    in-distribution as the positive class."""
    scores = torch.cat([in_scores, out_scores]).cpu().numpy()
    truth = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)  # every threshold
    return {"auroc": 100 * roc_auc_score(truth, scores),
            "fpr95": 100 * float(fpr[np.searchsorted(tpr, 0.95)])}


def evaluate_shift_and_ood(model: nn.Module, data: ImageData, eval_sets, test: Predictions,
                           run: Run) -> dict[str, float]:
    """ood/<set>/acc per shift set; per far-OOD set and score, its AUROC and FPR95 against the
    test set's scores (`test`)."""
    results = {}

    def predict(split):
        loader = make_loader(split, run.cfg.eval.batch_size, run, train=False)
        return predictions(model, loader, run.autocast)

    for name, shifted in eval_sets["shift"].items():
        mapping = class_mapping(shifted.classes, data.classes, name).to(run.device)
        shift = predict(shifted.test)
        results[f"ood/{name}/acc"] = 100 * (shift.classes == mapping[shift.labels]).float(
            ).mean().item()
    for name, far in eval_sets["ood"].items():
        far_scores = predict(far.test).scores
        for score in OOD_SCORES:
            detected = ood_detection(test.scores[score], far_scores[score])
            for metric, value in detected.items():
                results[f"ood/{name}/{score}/{metric}"] = value
    return results
