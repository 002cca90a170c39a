"""Robust accuracy under adversarial attacks (robustness.py), on the suite's seeded subset of the
test set. Keys (percent): pgd/linf/eps<k>/acc and fgsm/eps<k>/acc (k in 1/255 units),
pgd/l2/eps<r>/acc (r in pixels); its figure: accuracy against the budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from kdrun.checks import require
from kdrun.evaluation.base import Evaluation, Subject
from kdrun.evaluation.robustness import fgsm, pgd

PIXEL_LEVELS = 255  # L-inf budgets and steps are configured in 1/255 units


@dataclass
class PgdSettings:
    eps: list[float] = MISSING
    step_size: float = MISSING
    steps: int = MISSING
    random_start: bool = MISSING


@dataclass
class FgsmSettings:
    eps: list[float] = MISSING


@dataclass
class Settings:
    pgd_linf: PgdSettings = field(default_factory=PgdSettings)  # budgets in 1/255 units
    pgd_l2: PgdSettings = field(default_factory=PgdSettings)  # radii in pixels
    fgsm: FgsmSettings = field(default_factory=FgsmSettings)  # budgets in 1/255 units

    def __post_init__(self):
        for name in ("pgd_linf", "pgd_l2", "fgsm"):
            eps = getattr(self, name).eps
            require(all(e > 0 for e in eps), f"eval.attacks.{name}.eps", eps,
                    "budgets must be > 0")
        for name in ("pgd_linf", "pgd_l2"):
            attack = getattr(self, name)
            require(attack.steps >= 1, f"eval.attacks.{name}.steps", attack.steps, "use >= 1")
            require(attack.step_size > 0, f"eval.attacks.{name}.step_size", attack.step_size,
                    "use > 0")


def _number(value: float) -> str:
    return f"{value:g}"


class Attacks(Evaluation):
    Settings = Settings
    prefixes = ("pgd/", "fgsm/")

    def attack_list(self) -> list[tuple[str, dict]]:
        """(results key, attack arguments) for every configured attack and budget."""
        s = self.settings
        suite = [(f"pgd/linf/eps{_number(eps)}/acc",
                  {"kind": "pgd", "norm": "linf", "eps": eps / PIXEL_LEVELS,
                   "step_size": s.pgd_linf.step_size / PIXEL_LEVELS, "steps": s.pgd_linf.steps,
                   "random_start": s.pgd_linf.random_start}) for eps in s.pgd_linf.eps]
        suite += [(f"pgd/l2/eps{_number(eps)}/acc",
                   {"kind": "pgd", "norm": "l2", "eps": eps, "step_size": s.pgd_l2.step_size,
                    "steps": s.pgd_l2.steps, "random_start": s.pgd_l2.random_start})
                  for eps in s.pgd_l2.eps]
        suite += [(f"fgsm/eps{_number(eps)}/acc", {"kind": "fgsm", "eps": eps / PIXEL_LEVELS})
                  for eps in s.fgsm.eps]
        return suite

    def measure(self, subject: Subject) -> dict[str, float]:
        return robust_accuracy(subject.model, subject.attacked_loader, self.attack_list())

    def plot(self, results: dict[str, Any], subject: Subject, title: str) -> dict[str, Path]:
        """Accuracy as the budget grows, from the clean accuracy at eps 0: PGD L-inf (and FGSM
        beside it) on one panel, PGD L2 on another, each labelled with its settings."""
        from kdrun.evaluation.plots import plt, save_figure, save_numbers

        s = self.settings
        curves = {family: sorted((budget(k), v) for k, v in results.items()
                                 if k.startswith(prefix))
                  for family, prefix in (("linf", "pgd/linf/"), ("l2", "pgd/l2/"),
                                         ("fgsm", "fgsm/"))}
        panels = [p for p in (("linf", "L-inf budget eps (1/255)"),
                              ("l2", "L2 radius eps (pixels)"))
                  if curves[p[0]] or (p[0] == "linf" and curves["fgsm"])]
        if not panels:
            return {}
        clean = results["test/acc"]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4),
                                 squeeze=False, layout="constrained")
        for ax, (family, xlabel) in zip(axes[0], panels):
            attack = s.pgd_linf if family == "linf" else s.pgd_l2
            step = f"{attack.step_size:g}/255" if family == "linf" else f"{attack.step_size:g}"
            series = [(family, f"PGD-{attack.steps}, step {step}"
                       + (", random start" if attack.random_start else ""))]
            if family == "linf":
                series.append(("fgsm", "FGSM"))
            for name, label in series:
                if curves[name]:
                    ax.plot(*zip(*[(0.0, clean), *curves[name]]), marker="o", label=label)
            ax.set(xlabel=xlabel, ylabel="accuracy (%)", ylim=(0, 100), xlim=(0, None))
            ax.legend(loc="upper right", fontsize="small")
            ax.grid(alpha=0.3)
        fig.suptitle(f"{title}\nrobust accuracy on {len(subject.attacked):,} test images "
                     "(eps 0: clean accuracy on the whole test set)", fontsize="medium")
        path = subject.run.dir / "plots" / "robustness.png"
        save_numbers({"clean_acc": clean, **{k: v for k, v in curves.items() if v}}, path)
        return {"plots/robustness": save_figure(fig, path)}

    @classmethod
    def summary_lines(cls, results: dict[str, Any]) -> list[str]:
        robust = sorted((k for k in results if cls.owns(k)), key=_order)
        if not robust:
            return []
        return ["  robust acc  " + ", ".join(f"{cls.label(k)} {results[k]:.1f} %"
                                             for k in robust)]

    @classmethod
    def label(cls, key: str) -> str:
        """'pgd/linf/eps8/acc' -> 'PGD L-inf 8/255'; 'pgd/l2/eps0.5/acc' -> 'PGD L2 0.5';
        'fgsm/eps2/acc' -> 'FGSM 2/255'."""
        parts = key.removesuffix("/acc").split("/")
        eps = parts[-1].removeprefix("eps")
        if parts[0] == "fgsm":
            return f"FGSM {eps}/255"
        return f"PGD L-inf {eps}/255" if parts[1] == "linf" else f"PGD L2 {eps}"

    @classmethod
    def report_metrics(cls, keys: list[str]) -> list[str]:
        return sorted((k for k in keys if cls.owns(k)), key=_order)

    @classmethod
    def curves(cls, results: dict[str, Any]) -> dict[str, tuple[str, str, dict[float, float]]]:
        """Robust accuracy against the PGD L-inf budget, from the clean accuracy at 0."""
        points = {budget(k): v for k, v in results.items() if k.startswith("pgd/linf/")}
        if not points or "test/acc" not in results:
            return {}
        return {"robust_acc_vs_eps": ("PGD L-inf budget eps (1/255; 0: clean test accuracy)",
                                      "robust accuracy against the PGD L-inf budget",
                                      {0.0: results["test/acc"], **points})}


def budget(key: str) -> float:
    return float(key.removesuffix("/acc").split("/")[-1].removeprefix("eps"))


def _order(key: str) -> tuple[str, float]:
    return key.rsplit("/", 2)[0], budget(key)


def robust_accuracy(model, loader, suite: list[tuple[str, dict]]) -> dict[str, float]:
    """Accuracy (percent) on adversarial versions of the loader's images, per attack."""
    model.eval()
    results = {}
    for key, attack in suite:
        args = {k: v for k, v in attack.items() if k != "kind"}
        attack_fn = pgd if attack["kind"] == "pgd" else fgsm
        correct, seen = 0, 0
        for images, labels in loader:
            adversarial = attack_fn(model, images, labels, **args)
            correct += (model(adversarial).argmax(dim=1) == labels).sum().item()
            seen += len(labels)
        results[key] = 100 * correct / seen
    return results
