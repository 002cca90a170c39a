"""Everything measured after the clean test metrics: attacks and corruptions on one seeded
subset of the test set, shift and far-OOD sets, and the plots."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdrun.data import ImageData, make_loader
from kdrun.data.types import subset
from kdrun.evaluation.attacks import robust_accuracy
from kdrun.evaluation.calibration import calibration_bins
from kdrun.evaluation.corruptions import corruption_accuracy
from kdrun.evaluation.plots import reliability_diagram, robustness_curve
from kdrun.evaluation.shift import evaluate_shift_and_ood, predictions
from kdrun.runtime.run import Run


def evaluate_beyond_clean(model: nn.Module, data: ImageData, eval_sets: dict, run: Run,
                          clean: dict[str, Any]) -> dict[str, float]:
    """`clean`: the clean metrics already measured (the robustness curve starts from them)."""
    ev = run.cfg.eval
    # attacks and corruptions share one seeded subset of the test set, loaded once
    subset_loader = make_loader(subset(data.test, ev.subset, run.seed), ev.batch_size, run,
                                train=False)
    results = robust_accuracy(model, subset_loader, ev)
    results.update(corruption_accuracy(model, subset_loader, list(ev.corruptions),
                                       list(ev.severities), run.autocast, run.seed))
    if not (ev.plots or eval_sets["shift"] or eval_sets["ood"]):
        return results
    loader = make_loader(data.test, ev.batch_size, run, train=False)
    predicted, confidence, labels = predictions(model, loader, run.autocast)
    results.update(evaluate_shift_and_ood(model, data, eval_sets, confidence, run))
    if ev.plots:
        bins = calibration_bins(confidence, predicted == labels, ev.calibration_bins)
        plots = {"plots/reliability": reliability_diagram(bins, run.dir / "plots" /
                                                          "reliability.png")}
        curve = robustness_curve({**clean, **results}, run.dir / "plots" / "robustness.png")
        if curve is not None:
            plots["plots/robustness"] = curve
        run.sink.images(plots)
    return results
