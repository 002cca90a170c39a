"""Figures for a paper, as PNG and PDF (vector) with the numbers they draw in a JSON file
beside them, titled with the model, method and data set: the reliability diagram, and the
helpers every evaluation's figure uses."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

FORMATS = ("png", "pdf")


def reliability_diagram(bins: dict, path: Path, title: str) -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration, above the
    number of test images in each bin (a bin of 3 images is not a bin of 3,000); `bins` as
    calibration_bins returns them. Returns the PNG; the PDF and `<name>.json` lie beside it."""
    n = len(bins["count"])
    width = 100 / n
    centres = [(i + 0.5) * width for i in range(n)]
    shown = [i for i in range(n) if bins["count"][i] > 0]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.2, 5.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]},
                                      layout="constrained")
    top.bar([centres[i] for i in shown], [100 * bins["accuracy"][i] for i in shown],
            width=width, edgecolor="black", linewidth=0.6, label="accuracy")
    top.bar([centres[i] for i in shown],
            [100 * (bins["confidence"][i] - bins["accuracy"][i]) for i in shown],
            bottom=[100 * bins["accuracy"][i] for i in shown], width=width, color="none",
            edgecolor="tab:red", hatch="//", linewidth=0.6, label="gap to confidence")
    top.plot([0, 100], [0, 100], "--", color="gray", label="perfect calibration")
    top.set(ylabel="accuracy (%)", xlim=(0, 100), ylim=(0, 100),
            title=f"{title}\nECE {bins['ece']:.2f} % ({n} bins, "
                  f"{int(sum(bins['count'])):,} test images)")
    top.legend(loc="upper left", fontsize="small", framealpha=0.9)
    bottom.bar(centres, bins["count"], width=width, color="gray", edgecolor="black",
               linewidth=0.6)
    bottom.set(xlabel="confidence (%)", ylabel="images", yscale="symlog")
    save_numbers(bins, path)
    return save_figure(fig, path)


def figure_title(method: str, arch: str, dataset: str) -> str:
    return f"{arch} ({method}) on {dataset}"


def save_numbers(numbers: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(numbers, indent=1) + "\n")


def save_figure(fig, path: Path) -> Path:
    """`fig` as PNG and PDF at `path` (any suffix), closed; returns the PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in FORMATS:
        fig.savefig(path.with_suffix(f".{suffix}"), dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path.with_suffix(".png")
