"""Robust accuracy under the configured attacks (run on a seeded subset of the test set).
Keys: pgd/linf/eps<k>/acc and fgsm/eps<k>/acc (k in 1/255 units), pgd/l2/eps<r>/acc."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from kdrun.evaluation.robustness import fgsm, pgd

PIXEL_LEVELS = 255  # L-inf budgets and steps are configured in 1/255 units


def _key_number(value: float) -> str:
    return f"{value:g}"


def attack_suite(cfg: DictConfig) -> list[tuple[str, dict]]:
    """(results key, attack arguments) for every configured attack and budget."""
    suite = []
    for eps in cfg.pgd_linf.eps:
        suite.append((f"pgd/linf/eps{_key_number(eps)}/acc", {
            "kind": "pgd", "norm": "linf", "eps": eps / PIXEL_LEVELS,
            "step_size": cfg.pgd_linf.step_size / PIXEL_LEVELS, "steps": cfg.pgd_linf.steps,
            "random_start": cfg.pgd_linf.random_start}))
    for eps in cfg.pgd_l2.eps:
        suite.append((f"pgd/l2/eps{_key_number(eps)}/acc", {
            "kind": "pgd", "norm": "l2", "eps": eps, "step_size": cfg.pgd_l2.step_size,
            "steps": cfg.pgd_l2.steps, "random_start": cfg.pgd_l2.random_start}))
    for eps in cfg.fgsm.eps:
        suite.append((f"fgsm/eps{_key_number(eps)}/acc", {"kind": "fgsm",
                                                          "eps": eps / PIXEL_LEVELS}))
    return suite


def robust_accuracy(model: nn.Module, loader, cfg: DictConfig) -> dict[str, float]:
    """Accuracy (percent) on adversarial versions of the loader's images, per attack."""
    model.eval()
    results = {}
    for key, attack in attack_suite(cfg):
        args = {k: v for k, v in attack.items() if k != "kind"}
        correct, seen = 0, 0
        for images, labels in loader:
            if attack["kind"] == "pgd":
                adversarial = pgd(model, images, labels, **args)
            else:
                adversarial = fgsm(model, images, labels, **args)
            correct += (model(adversarial).argmax(dim=1) == labels).sum().item()
            seen += len(labels)
        results[key] = 100 * correct / seen
    return results

