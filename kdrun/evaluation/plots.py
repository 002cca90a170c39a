"""The run's evaluation as pictures (PNG): the reliability diagram and the robustness curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402


def reliability_diagram(bins: dict, path: Path) -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration."""
    n = len(bins["count"])
    shown = [i for i in range(n) if bins["count"][i] > 0]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.bar([(i + 0.5) / n for i in shown], [bins["accuracy"][i] for i in shown], width=1 / n,
           edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"reliability (ECE {bins['ece']:.2f} %)")
    ax.legend(loc="upper left")
    return _save(fig, path)


def robustness_curve(results: dict, path: Path) -> Path | None:
    """Accuracy under PGD L-inf as the budget grows (eps 0: the clean test accuracy)."""
    points = sorted((float(key.split("/")[2].removeprefix("eps")), value)
                    for key, value in results.items()
                    if key.startswith("pgd/linf/") and key.endswith("/acc"))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0] + [eps for eps, _ in points], [results["test/acc"]] + [acc for _, acc in points],
            marker="o")
    ax.set(xlabel="PGD L-inf budget eps (x/255)", ylabel="accuracy (%)", ylim=(0, 100),
           title="robustness")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
