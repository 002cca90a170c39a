"""Out-of-distribution detection to OpenOOD's protocol (Zhang et al., OpenOOD v1.5, arXiv
2306.09301): near- and far-OOD sets, each told apart from the test set by every configured
score (kdrun/evaluation/scores/), with the fitted scores' statistics computed once per model
from the training set. Per set, score and metric, in percent: ood/<set>/<score>/<metric>, and
the mean over each role's sets, ood/near/<score>/<metric> and ood/far/<score>/<metric>.
Metrics, with in-distribution (the test set) as the positive class of the scores as they are:
auroc; fpr95, the share of OOD images taken as in-distribution at the threshold that keeps 95 %
of the test images; aupr_in, the average precision of finding test images; aupr_out, that of
finding OOD images (the negated score ranks them). OpenOOD v1.5 takes OOD as positive: its
AUROC, AUPR-In and AUPR-Out are these (its AUPRs as areas under the PR curve, ours scikit-
learn's average precision); its FPR@95TPR is the share of test images rejected at the
threshold that finds 95 % of the OOD images, which is not our fpr95."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING, DictConfig
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from kdrun.checks import require
from kdrun.data import ImageData, load_named_dataset, named_dataset_cfg
from kdrun.errors import ConfigError
from kdrun.evaluation.base import Embedding, Evaluation, Subject
from kdrun.evaluation.scores import SCORES, build_score

ROLES = ("near", "far")
METRICS = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}


@dataclass
class Settings:
    # name: root (null: its YAML's), or {root: PATH, <a setting of the set>: VALUE}
    near: dict[str, Any] = field(default_factory=dict)
    far: dict[str, Any] = field(default_factory=dict)
    scores: list[str] = MISSING
    settings: dict[str, Any] = field(default_factory=dict)  # per score: its settings
    fit_subset: int | None = MISSING  # training images the fitted scores read (null: all)

    def __post_init__(self):
        for name in self.scores:
            SCORES.get(name, key="eval.ood.scores")
        both = set(self.near) & set(self.far)
        require(not both, "eval.ood", sorted(both), "a set is either near or far, not both")
        if self.fit_subset is not None:
            require(self.fit_subset >= 1, "eval.ood.fit_subset", self.fit_subset,
                    "use >= 1, or null for the whole training set")


def ood_detection(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict[str, float]:
    """AUROC, FPR at 95 % TPR, AUPR-In and AUPR-Out (percent) of telling in- from
    out-of-distribution images by a score that is higher in-distribution."""
    scores = torch.cat([in_scores, out_scores]).double().cpu().numpy()
    truth = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)  # every threshold
    return {"auroc": 100 * roc_auc_score(truth, scores),
            "fpr95": 100 * float(fpr[np.searchsorted(tpr, 0.95)]),
            "aupr_in": 100 * average_precision_score(truth, scores),
            "aupr_out": 100 * average_precision_score(1 - truth, -scores)}


class Ood(Evaluation):
    Settings = Settings
    prefixes = ("ood/",)

    def check(self, cfg: DictConfig) -> None:
        for role in ROLES:
            for name, root in getattr(self.settings, role).items():
                named_dataset_cfg(name, root, cfg.dataset, f"eval.ood.{role}.{name}")
        for name in dict.fromkeys([*self.settings.scores, *self.settings.settings]):
            build_score(name, self.settings.settings.get(name))

    def load(self, data: ImageData, dataset_cfg: DictConfig, cache_dir: str) -> None:
        self.sets = {}
        for role in ROLES:
            for name, root in getattr(self.settings, role).items():
                where = f"eval.ood.{role}.{name}"
                found = load_named_dataset(name, root, dataset_cfg, where, cache_dir)
                if sorted(found.classes) == sorted(data.classes):
                    raise ConfigError(f"{where}: {name} has the training set's own classes, so "
                                      f"it is a shift, not OOD: name it under "
                                      f"eval.shift.sets.{name}")
                self.sets[name] = (role, found)
        self.scores = {name: build_score(name, self.settings.settings.get(name))
                       for name in self.settings.scores}
        fitted_on = min(len(data.train), self.settings.fit_subset or len(data.train))
        for score in self.scores.values():
            score.check(fitted_on)

    def check_model(self, model) -> None:
        for score in self.scores.values():
            score.check_model(model)

    def measure(self, subject: Subject) -> dict[str, float]:
        model = subject.model
        for score in self.scores.values():
            if score.fitted:
                score.fit(subject.train_set(self.settings.fit_subset), model)
        inside = self._scores(subject, subject.data.test, subject.test)
        results = {}
        for name, (_, found) in self.sets.items():
            outside = self._scores(subject, found.test, subject.embed(found.test))
            for score in self.scores:
                for metric, value in ood_detection(inside[score], outside[score]).items():
                    results[f"ood/{name}/{score}/{metric}"] = value
        for role in ROLES:
            names = [n for n, (r, _) in self.sets.items() if r == role]
            for score in self.scores if names else []:
                for metric in METRICS:
                    results[f"ood/{role}/{score}/{metric}"] = float(np.mean(
                        [results[f"ood/{n}/{score}/{metric}"] for n in names]))
        return results

    def _scores(self, subject: Subject, split, seen: Embedding) -> dict[str, torch.Tensor]:
        scores = {name: s.score(seen) for name, s in self.scores.items() if not s.reads_images}
        by_images = {name: s for name, s in self.scores.items() if s.reads_images}
        if by_images:
            subject.model.eval()
            parts: dict[str, list[torch.Tensor]] = {name: [] for name in by_images}
            for images, _ in subject.loader(split):
                for name, s in by_images.items():
                    parts[name].append(s.score_images(subject.model, images))
            scores.update({name: torch.cat(p) for name, p in parts.items()})
        return {name: scores[name] for name in self.scores}

    @classmethod
    def summary_lines(cls, results: dict[str, Any]) -> list[str]:
        """Per set and role mean: AUROC / FPR95 of each score; a note where a score ranks an
        OOD set above the test set (AUROC < 50 %)."""
        found = [k.split("/") for k in results if cls.owns(k) and k.endswith("/auroc")]
        sets = sorted({parts[1] for parts in found} - set(ROLES))
        lines = []
        for name in [*sets, *(r for r in ROLES if any(p[1] == r for p in found))]:
            scores = [p[2] for p in found if p[1] == name]
            title = f"{name} mean" if name in ROLES else name
            lines.append(f"  OOD {title}  AUROC / FPR95: " + ", ".join(
                f"{_score_label(s)} {results[f'ood/{name}/{s}/auroc']:.1f} / "
                f"{results[f'ood/{name}/{s}/fpr95']:.1f} %" for s in scores))
            below = [_score_label(s) for s in scores if results[f"ood/{name}/{s}/auroc"] < 50]
            if below and name not in ROLES:
                lines.append(f"    note: {', '.join(below)} below 50 %: the model scores {name} "
                             "as more in-distribution than its own test set")
        return lines

    @classmethod
    def label(cls, key: str) -> str:
        """'ood/far/energy/auroc' -> 'far-OOD AUROC (energy)'; 'ood/svhn/msp/fpr95' ->
        'svhn FPR95 (MSP)'."""
        _, name, score, metric = key.split("/")
        where = f"{name}-OOD" if name in ROLES else name
        return f"{where} {METRICS.get(metric, metric)} ({_score_label(score)})"

    @classmethod
    def report_metrics(cls, keys: list[str]) -> list[str]:
        """The roles' mean AUROC per score; per set where a sweep has no roles' means."""
        auroc = sorted(k for k in keys if cls.owns(k) and k.endswith("/auroc"))
        means = [k for k in auroc if k.split("/")[1] in ROLES]
        return means or auroc


def _score_label(name: str) -> str:
    return SCORES.get(name).label if name in SCORES.names() else name
