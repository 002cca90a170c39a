"""Everything measured after the clean test metrics: attacks and corruptions on one seeded
subset of the test set, shift and far-OOD sets, and the plots."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdrun.config import choice
from kdrun.data import ImageData, make_loader
from kdrun.data.types import subset
from kdrun.evaluation.attacks import robust_accuracy
from kdrun.evaluation.calibration import calibration_bins
from kdrun.evaluation.corruptions import corruption_accuracy
from kdrun.evaluation.plots import figure_title, reliability_diagram, robustness_curves
from kdrun.evaluation.shift import evaluate_shift_and_ood, predictions
from kdrun.runtime.run import Run


def evaluate_beyond_clean(model: nn.Module, data: ImageData, eval_sets: dict, run: Run,
                          clean: dict[str, Any]) -> dict[str, float]:
    """`clean`: the clean metrics already measured (the robustness curve starts from them)."""
    ev = run.cfg.eval
    # attacks and corruptions share one seeded subset of the test set, loaded once
    attacked = subset(data.test, ev.subset, run.seed)
    subset_loader = make_loader(attacked, ev.batch_size, run, train=False)
    results = robust_accuracy(model, subset_loader, ev)
    results.update(corruption_accuracy(model, subset_loader, list(ev.corruptions),
                                       list(ev.severities), run.autocast, run.seed))
    if not (ev.plots or eval_sets["shift"] or eval_sets["ood"]):
        return results
    # the clean evaluation's batches, so the reliability diagram's ECE is calib/ece to the digit
    loader = make_loader(data.test, run.cfg.trainer.eval_batch_size, run, train=False)
    test = predictions(model, loader, run.autocast)
    results.update(evaluate_shift_and_ood(model, data, eval_sets, test, run))
    if ev.plots:
        bins = calibration_bins(test.scores["msp"], test.classes == test.labels,
                                ev.calibration_bins)
        trained = choice(run.cfg.mode) == "train"
        title = figure_title(run.cfg.method.name if trained else "evaluated", model.arch,
                             run.cfg.dataset.name)
        plots = {"plots/reliability": reliability_diagram(bins, run.dir / "plots" /
                                                          "reliability.png", title)}
        curve = robustness_curves({**clean, **results}, ev, len(attacked),
                                  run.dir / "plots" / "robustness.png", title)
        if curve is not None:
            plots["plots/robustness"] = curve
        run.sink.images(plots)
    return results
