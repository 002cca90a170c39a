"""The run's evaluation as figures for a paper: the reliability diagram and the robustness
curves, titled with the model, method and data set, in percent, as PNG and PDF (vector), with
the numbers they draw in a JSON file beside them."""

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
    _save_numbers(bins, path)
    return save_figure(fig, path)


def robustness_curves(results: dict, attacks: dict, attacked: int, path: Path,
                      title: str) -> Path | None:
    """Accuracy as the attack budget grows, from the clean accuracy at eps 0: PGD L-inf (and
    FGSM beside it) on one panel, PGD L2 on another, each labelled with its settings.
    `attacks`: the eval config's pgd_linf, pgd_l2 and fgsm sections; `attacked`: how many
    test images the attacks ran on."""
    curves = {family: sorted((float(key.split("/")[-2].removeprefix("eps")), value)
                             for key, value in results.items()
                             if key.startswith(prefix) and key.endswith("/acc"))
              for family, prefix in (("linf", "pgd/linf/"), ("l2", "pgd/l2/"), ("fgsm", "fgsm/"))}
    panels = [p for p in (("linf", "L-inf budget eps (1/255)"), ("l2", "L2 radius eps (pixels)"))
              if curves[p[0]] or (p[0] == "linf" and curves["fgsm"])]
    if not panels:
        return None
    clean = results["test/acc"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False,
                             layout="constrained")
    for ax, (family, xlabel) in zip(axes[0], panels):
        series = [(family, f"PGD-{attacks[f'pgd_{family}']['steps']}, step "
                   + _step(family, attacks[f'pgd_{family}']['step_size'])
                   + (", random start" if attacks[f"pgd_{family}"]["random_start"] else ""))]
        if family == "linf":
            series.append(("fgsm", "FGSM"))
        for name, label in series:
            if curves[name]:
                points = [(0.0, clean), *curves[name]]
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set(xlabel=xlabel, ylabel="accuracy (%)", ylim=(0, 100), xlim=(0, None))
        ax.legend(loc="upper right", fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}\nrobust accuracy on {attacked:,} test images (eps 0: clean accuracy "
                 f"on the whole test set)", fontsize="medium")
    _save_numbers({"clean_acc": clean, **{k: v for k, v in curves.items() if v}}, path)
    return save_figure(fig, path)


def figure_title(method: str, arch: str, dataset: str) -> str:
    return f"{arch} ({method}) on {dataset}"


def _step(family: str, step_size: float) -> str:
    return f"{step_size:g}/255" if family == "linf" else f"{step_size:g}"


def _save_numbers(numbers: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(numbers, indent=1) + "\n")


def save_figure(fig, path: Path) -> Path:
    """`fig` as PNG and PDF at `path` (any suffix), closed; returns the PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in FORMATS:
        fig.savefig(path.with_suffix(f".{suffix}"), dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path.with_suffix(".png")
