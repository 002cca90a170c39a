"""Beyond the test set: accuracy on distribution-shifted sets with the training labels
(CINIC-10 for a CIFAR-10 model), and detection of far out-of-distribution sets (SVHN for a
CIFAR-10 model) by maximum softmax probability (Hendrycks & Gimpel, arXiv 1610.02136).
Keys: ood/<set>/acc for shift sets; ood/<set>/auroc and ood/<set>/fpr95 (percent) for
far-OOD sets."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from kdrun.data import ImageData, load_dataset, make_loader, named_dataset_cfg
from kdrun.errors import ConfigError
from kdrun.runtime.run import Run


def load_eval_sets(eval_cfg: DictConfig, dataset_cfg: DictConfig, cache_dir: str
                   ) -> dict[str, dict[str, tuple[ImageData, DictConfig]]]:
    """The configured shift and far-OOD sets, loaded when the run starts (a missing one
    fails in seconds, not after training)."""
    sets: dict[str, dict] = {"shift": {}, "ood": {}}
    for kind, named in sets.items():
        for name, root in eval_cfg[kind].items():
            cfg = named_dataset_cfg(name, root, dataset_cfg)
            named[name] = (load_dataset(cfg, cache_dir), cfg)
    return sets


def class_mapping(shift_classes: list[str], train_classes: list[str], name: str) -> torch.Tensor:
    """Shift-set label -> training label, matched by class name."""
    missing = [c for c in shift_classes if c not in train_classes]
    if missing:
        raise ConfigError(f"eval.shift.{name}: its classes {missing} are not training classes; "
                          "a shift set must share the training label names (use eval.ood)")
    return torch.tensor([train_classes.index(c) for c in shift_classes])


@torch.inference_mode()
def predictions(model: nn.Module, loader, autocast_ctx) -> tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
    """(top-1 class, max softmax probability, label) for every image of the loader."""
    model.eval()
    classes, confidence, labels = [], [], []
    for images, targets in loader:
        with autocast_ctx():
            probs = model(images).float().softmax(dim=1)
        top = probs.max(dim=1)
        classes.append(top.indices)
        confidence.append(top.values)
        labels.append(targets)
    return torch.cat(classes), torch.cat(confidence), torch.cat(labels)


def ood_detection(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict[str, float]:
    """AUROC and FPR at 95 % TPR (percent) of telling in- from out-of-distribution by score,
    in-distribution as the positive class."""
    scores = torch.cat([in_scores, out_scores]).cpu().numpy()
    truth = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)  # every threshold
    return {"auroc": 100 * roc_auc_score(truth, scores),
            "fpr95": 100 * float(fpr[np.searchsorted(tpr, 0.95)])}


def evaluate_shift_and_ood(model: nn.Module, data: ImageData, eval_sets, in_scores: torch.Tensor,
                           run: Run) -> dict[str, float]:
    """ood/<set>/acc per shift set; ood/<set>/auroc and fpr95 per far-OOD set, against the
    test set's maximum softmax probabilities `in_scores`."""
    results = {}

    def predict(split):
        loader = make_loader(split, run.cfg.eval.batch_size, run, train=False)
        return predictions(model, loader, run.autocast)

    for name, (shifted, _) in eval_sets["shift"].items():
        mapping = class_mapping(shifted.classes, data.classes, name).to(run.device)
        predicted, _, labels = predict(shifted.test)
        results[f"ood/{name}/acc"] = 100 * (predicted == mapping[labels]).float().mean().item()
    for name, (far, _) in eval_sets["ood"].items():
        _, out_scores, _ = predict(far.test)
        for metric, value in ood_detection(in_scores, out_scores).items():
            results[f"ood/{name}/{metric}"] = value
    return results
