"""The evaluations, and the suite a run measures with them. Every module of this folder that
defines an Evaluation subclass is an evaluation named like the module and like its YAML in
conf/evaluation/. Each key of the `eval` config that is not one of the suite's shared settings
names one to run, with its settings laid over that YAML, so `+eval.ood.far.svhn=null` turns OOD
detection on with its defaults. Modules without one (the clean pass, attack and corruption
arithmetic, figures) are the parts evaluations share. With eval.teacher the teacher goes
through the same evaluations - teacher/<key> and vs_teacher/<key> (student minus teacher),
since robustness papers report what distillation transfers; this module owns those two
prefixes, and reads each key under them through the evaluation that owns the key it
prefixes."""

from __future__ import annotations

import dataclasses
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.checks import typed_settings
from kdrun.config import choice
from kdrun.data import ImageData
from kdrun.errors import ConfigError
from kdrun.evaluation.base import Evaluation, Subject, SuiteSettings
from kdrun.evaluation.calibration import calibration_bins
from kdrun.evaluation.plots import figure_title, reliability_diagram
from kdrun.registry import Registry, register_subclasses
from kdrun.runtime.run import Run

EVALUATIONS: Registry[type[Evaluation]] = Registry("evaluation")

SUITE_KEYS = tuple(f.name for f in dataclasses.fields(SuiteSettings))


def evaluation_defaults(name: str) -> DictConfig:
    return OmegaConf.load(str(files("kdrun.conf").joinpath("evaluation", f"{name}.yaml")))


def named_evaluation(name: str) -> type[Evaluation]:
    if name not in EVALUATIONS.names():
        raise ConfigError(f"eval.{name} is neither an evaluation "
                          f"({', '.join(EVALUATIONS.names())}) nor a setting of eval "
                          f"({', '.join(SUITE_KEYS)}): remove it, or add "
                          f"kdrun/evaluation/{name}.py")
    return EVALUATIONS.get(name)


def complete_eval_config(eval_cfg: DictConfig) -> None:
    """Each named evaluation's settings laid over its YAML's, in place (config.yaml then shows
    every setting a run used); a null evaluation is removed (`eval.attacks=null`: off)."""
    for name in [k for k in eval_cfg if k not in SUITE_KEYS]:
        if eval_cfg[name] is None:
            del eval_cfg[name]
            continue
        named_evaluation(name)  # an unknown name: one line
        eval_cfg[name] = OmegaConf.merge(evaluation_defaults(name), eval_cfg[name])


def suite_settings(eval_cfg: DictConfig) -> SuiteSettings:
    plain = {k: v for k, v in eval_cfg.items() if k in SUITE_KEYS}
    return typed_settings(plain, SuiteSettings, "eval", "eval", "conf/eval/<preset>.yaml")


def build_evaluations(eval_cfg: DictConfig) -> list[Evaluation]:
    """The configured evaluations with typed settings (ConfigError: one line), in config
    order; `eval_cfg` as complete_eval_config leaves it."""
    suite = suite_settings(eval_cfg)
    evaluations = []
    for name in (k for k in eval_cfg if k not in SUITE_KEYS):
        cls = named_evaluation(name)
        settings = typed_settings(eval_cfg[name], cls.Settings, f"eval.{name}",
                                  f"evaluation {name}", f"conf/evaluation/{name}.yaml")
        evaluations.append(cls(settings, suite))
    return evaluations


TEACHER, VERSUS = "teacher/", "vs_teacher/"


class EvaluationSuite:
    """The configured evaluations, their data sets read when the run starts."""

    def __init__(self, eval_cfg: DictConfig, data: ImageData, dataset_cfg: DictConfig,
                 cache_dir: str):
        self.settings = suite_settings(eval_cfg)
        self.evaluations = build_evaluations(eval_cfg)
        for evaluation in self.evaluations:
            evaluation.load(data, dataset_cfg, cache_dir)

    def check_model(self, model: nn.Module, teacher: nn.Module | None = None) -> None:
        """What the evaluations need of the model (and of the teacher, when it is evaluated
        too), checked before training: ConfigError, one line."""
        for evaluation in self.evaluations:
            evaluation.check_model(model)
            if self.settings.teacher and teacher is not None:
                evaluation.check_model(teacher)

    def run(self, model: nn.Module, data: ImageData, run: Run, clean: dict[str, Any],
            teacher: nn.Module | None = None) -> dict[str, float]:
        """`clean`: the clean metrics already measured (figures start from them)."""
        results = self._measure(model, data, run, clean, plots=self.settings.plots)
        if self.settings.teacher and teacher is not None:
            measured = self._measure(teacher, data, run, {}, plots=False)
            for key, value in measured.items():
                results[TEACHER + key] = value
                results[VERSUS + key] = results[key] - value
        return results

    def _measure(self, model, data, run, clean, plots: bool) -> dict[str, float]:
        subject = Subject(model, data, run, self.settings)
        results = {}
        for evaluation in self.evaluations:
            measured = evaluation.measure(subject)
            stray = [key for key in measured if not evaluation.owns(key)]
            if stray:  # a key nobody owns would have no summary line, label or column
                raise TypeError(f"evaluation {evaluation.name} returned {stray[:3]}, outside "
                                f"its prefixes {evaluation.prefixes}")
            results.update(measured)
        if plots:
            title = figure_title(run.cfg.method.name if choice(run.cfg.mode) == "train"
                                 else "evaluated", model.arch, run.cfg.dataset.name)
            figures = {"plots/reliability": self._reliability(subject, title)}
            for evaluation in self.evaluations:
                figures.update(evaluation.plot({**clean, **results}, subject, title))
            run.sink.images(figures)
        return results

    def _reliability(self, subject: Subject, title: str) -> Path:
        """From the clean evaluation's batches, so its ECE is calib/ece to the digit."""
        test = subject.test
        confidence, predicted = test.logits.softmax(dim=1).max(dim=1)
        bins = calibration_bins(confidence, predicted == test.labels,
                                self.settings.calibration_bins)
        return reliability_diagram(bins, subject.run.dir / "plots" / "reliability.png", title)


def owner(key: str) -> type[Evaluation] | None:
    return next((EVALUATIONS.get(n) for n in EVALUATIONS.names()
                 if EVALUATIONS.get(n).owns(key)), None)


def _part(results: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k.removeprefix(prefix): v for k, v in results.items() if k.startswith(prefix)
            and owner(k.removeprefix(prefix))}


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Every evaluation's lines, then the teacher's under its name."""
    lines = [line for n in EVALUATIONS.names()
             for line in EVALUATIONS.get(n).summary_lines(results)]
    teacher = _part(results, TEACHER)
    teacher_lines = [line for n in EVALUATIONS.names()
                     for line in EVALUATIONS.get(n).summary_lines(teacher)]
    if teacher_lines:
        lines += ["  teacher, through the same evaluations:"] + [
            "  " + line for line in teacher_lines]
    return lines


def label(key: str) -> str:
    """A results key's column header in kdrun-report (the key itself if no evaluation owns
    it)."""
    for prefix, said in ((TEACHER, "teacher "), (VERSUS, "student - teacher ")):
        if key.startswith(prefix) and (found := owner(key.removeprefix(prefix))):
            return said + found.label(key.removeprefix(prefix))
    found = owner(key)
    return found.label(key) if found else key


def report_metrics(keys: list[str]) -> list[str]:
    """The columns kdrun-report adds by default for the evaluations a sweep ran, each followed
    by its student-minus-teacher difference where the teacher was evaluated."""
    chosen = []
    for n in EVALUATIONS.names():
        for key in EVALUATIONS.get(n).report_metrics(keys):
            chosen += [key] + [VERSUS + key] * (VERSUS + key in keys)
    return chosen


def curves(results: dict[str, Any]) -> dict[str, tuple[str, str, dict[float, float]]]:
    return {name: curve for n in EVALUATIONS.names()
            for name, curve in EVALUATIONS.get(n).curves(results).items()}


register_subclasses(EVALUATIONS, __name__, __path__, Evaluation)
for _name in EVALUATIONS.names():
    EVALUATIONS.get(_name).name = _name
