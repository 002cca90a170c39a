"""`kdrun`: compose the config, validate it, then data -> teacher -> student -> method -> fit ->
results, each one call here."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.config import choice, register_configs, validate
from kdrun.data import ImageData, load_dataset, make_loader
from kdrun.data.datasets import named_dataset_cfg
from kdrun.data.types import subset
from kdrun.engine import checkpoint, distributed
from kdrun.engine.runtime import (
    autocast,
    memory_format,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from kdrun.engine.teachers import resolve_teacher
from kdrun.engine.trainer import Recipe, Trainer
from kdrun.errors import KdrunError
from kdrun.evaluation.accuracy import evaluate
from kdrun.evaluation.attacks import robust_accuracy
from kdrun.evaluation.calibration import calibration_bins
from kdrun.evaluation.corruptions import corruption_accuracy
from kdrun.evaluation.plots import reliability_diagram, robustness_curve
from kdrun.evaluation.shift import evaluate_shift_and_ood, load_eval_sets, predictions
from kdrun.methods import METHODS, build_method
from kdrun.methods.base import StageContext
from kdrun.models import build_model
from kdrun.sinks import MultiSink, build_sinks
from kdrun.sweep import SweepSummary

log = logging.getLogger("kdrun")
register_configs()


@dataclass
class Session:
    """What a run works with once its inputs are checked and loaded."""
    device: torch.device
    data: ImageData
    eval_sets: dict  # eval.shift / eval.ood data sets, loaded up front
    sink: MultiSink
    autocast: Callable
    results: dict[str, Any]  # provenance first; metrics are added to it


@contextlib.contextmanager
def run_session(cfg: DictConfig, run_dir: Path, sweep_group: str | None, run_name: str | None):
    """What every run shares: validation before any work, the run directory's record, the
    sinks (always closed), the data and the evaluation sets."""
    validate(cfg)
    device = distributed.device_for(resolve_device(cfg.trainer.device))
    info = run_info(device, cfg.trainer.precision)  # read now: the code this run starts from
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    sink = build_sinks(cfg, run_dir, sweep_group, run_name)
    try:
        with distributed.main_first():  # one download or decoding cache, then shared
            data = load_dataset(cfg.dataset, cfg.cache_dir)
            eval_sets = load_eval_sets(cfg.eval, cfg.dataset, cfg.cache_dir)
        precision = resolve_precision(choice(cfg.trainer.precision), device)
        yield Session(device, data, eval_sets, sink, functools.partial(autocast, device, precision),
                      dict(info))
    finally:
        sink.close()


def evaluate_beyond_clean(model: nn.Module, run: Session, cfg: DictConfig,
                          run_dir: Path) -> dict[str, float]:
    """Attacks, shift and far-OOD sets, and the plots: what follows the clean test metrics."""
    # attacks and corruptions share one seeded subset of the test set, loaded once
    subset_loader = make_loader(subset(run.data.test, cfg.eval.subset, cfg.seed),
                                cfg.eval.batch_size, run.device, cfg.seed, train=False,
                                dataset_cfg=cfg.dataset)
    results = robust_accuracy(model, subset_loader, cfg.eval)
    results.update(corruption_accuracy(model, subset_loader, list(cfg.eval.corruptions),
                                       list(cfg.eval.severities), run.autocast, cfg.seed))
    if not (cfg.eval.plots or run.eval_sets["shift"] or run.eval_sets["ood"]):
        return results
    loader = make_loader(run.data.test, cfg.eval.batch_size, run.device, cfg.seed, train=False,
                         dataset_cfg=cfg.dataset)
    predicted, confidence, labels = predictions(model, loader, run.autocast)
    results.update(evaluate_shift_and_ood(model, run.data, run.eval_sets, confidence, run.device,
                                          cfg.eval.batch_size, run.autocast, cfg.seed))
    if cfg.eval.plots:
        bins = calibration_bins(confidence, predicted == labels, cfg.eval.calibration_bins)
        plots = {"plots/reliability": reliability_diagram(bins, run_dir / "plots" /
                                                          "reliability.png")}
        curve = robustness_curve({**run.results, **results}, run_dir / "plots" / "robustness.png")
        if curve is not None:
            plots["plots/robustness"] = curve
        run.sink.images(plots)
    return results


def train(cfg: DictConfig, run_dir: Path, sweep_group: str | None = None,
          run_name: str | None = None) -> dict[str, Any]:
    """One whole training run; returns the flat results that also land in results.json.
    Under torch.distributed every rank trains; rank 0 alone evaluates beyond the clean test
    set and writes the results."""
    with run_session(cfg, run_dir, sweep_group, run_name) as run:
        needs_teacher = METHODS.get(cfg.method.name).needs_teacher
        teacher = resolve_teacher(cfg, run.data, run.device, run.sink) if needs_teacher else None
        seed_everything(cfg.seed)
        make_model = functools.partial(build_model, num_classes=cfg.dataset.num_classes,
                                       mean=cfg.dataset.mean, std=cfg.dataset.std,
                                       drop_rate=cfg.student.drop_rate)
        method = build_method(cfg.method, make_model(cfg.student.arch), teacher,
                              cfg.teacher.corruption, make_model)
        if distributed.world_size() > 1:  # the ranks' noise and dropout draws differ
            seed_everything(cfg.seed + 1_000_003 * distributed.rank())
        layout = memory_format(cfg.trainer.channels_last)
        method.to(run.device, memory_format=layout)  # where work between stages runs
        context = StageContext(run_dir, run.device, run.autocast, layout,
                               cfg.dataset.image_size, cfg.seed, run.sink.log, run.sink.images,
                               run.results, functools.partial(_load_named, cfg),
                               functools.partial(make_loader, device=run.device, seed=cfg.seed,
                                                 train=False, dataset_cfg=cfg.dataset,
                                                 shard=True))
        for stage in method.stages(run.data, cfg.epochs, context):
            run.results.update(train_stage(cfg, run, run_dir, method, stage))
        if not distributed.is_main():
            return run.results
        student = method.eval_model()
        run.results["meta/student_arch"] = student.arch
        if method.teacher is not None:
            run.results["meta/teacher_arch"] = method.teacher.arch
        run.results.update(evaluate_beyond_clean(student, run, cfg, run_dir))
        checkpoint.save_model(student, run_dir / "checkpoints" / "student.pt",
                              meta={"test/acc": run.results["test/acc"]})
        for name, peer in method.peer_models().items():
            checkpoint.save_model(peer, run_dir / "checkpoints" / f"{name}.pt",
                                  meta={"test/acc": run.results[f"{name}/test/acc"]})
        run.sink.results(run.results)
    return run.results


def train_stage(cfg: DictConfig, run: Session, run_dir: Path, method, stage) -> dict[str, Any]:
    """One stage's training. A multi-stage method's stages each keep their checkpoints and
    their test metrics under the stage's name (round1/test/acc, checkpoints/round1.pt)."""
    single = stage.name == "train"
    trainer = Trainer(cfg.trainer, run.device, run_dir, run.sink, cfg.seed, cfg.dataset,
                      resume=cfg.trainer.resume, label="" if single else f"{stage.name} ",
                      calibration_bins=cfg.eval.calibration_bins,
                      checkpoint_name="last.pt" if single else f"last-{stage.name}.pt")
    results = trainer.fit(method, stage.data, Recipe(stage.epochs, cfg.trainer.batch_size,
                                                     cfg.optim, cfg.sched))
    if not single:
        checkpoint.save_model(method.eval_model(), run_dir / "checkpoints" / f"{stage.name}.pt",
                              meta={"test/acc": results["test/acc"]})
        results.update({f"{stage.name}/{k}": v for k, v in results.items()
                        if k.startswith(("test/", "teacher/test/acc"))})
    return results


def _load_named(cfg: DictConfig, name: str, root: str | None) -> ImageData:
    return load_dataset(named_dataset_cfg(name, root, cfg.dataset), cfg.cache_dir)


def evaluate_checkpoint(cfg: DictConfig, run_dir: Path, sweep_group: str | None = None,
                        run_name: str | None = None) -> dict[str, Any]:
    """`mode=eval`: the evaluation suite on a saved model (`checkpoint=PATH`), no training."""
    with run_session(cfg, run_dir, sweep_group, run_name) as run:
        model = checkpoint.load_classifier(Path(cfg.checkpoint).expanduser(),
                                           cfg.dataset.num_classes, cfg.dataset.mean,
                                           cfg.dataset.std).to(run.device)
        loader = make_loader(run.data.test, cfg.trainer.eval_batch_size, run.device, cfg.seed,
                             train=False, dataset_cfg=cfg.dataset)
        run.results.update(evaluate(model, loader, run.autocast, bins=cfg.eval.calibration_bins))
        run.results.update(evaluate_beyond_clean(model, run, cfg, run_dir))
        run.sink.results(run.results)
    return run.results


def run_info(device: torch.device, precision) -> dict[str, str]:
    dtype = resolve_precision(choice(precision), device)
    return {"meta/git_commit": git_commit(), "meta/device": str(device),
            "meta/precision": "fp32" if dtype is None else "bf16", "meta/torch": torch.__version__,
            "meta/processes": distributed.world_size()}


def git_commit() -> str:
    """The commit kdrun ran from ('-dirty' with uncommitted changes), or 'unknown' (e.g. an
    installed copy, even inside some other repository's virtual environment)."""
    here = Path(__file__).parent
    try:
        subprocess.run(["git", "ls-files", "--error-unmatch", Path(__file__).name], cwd=here,
                       capture_output=True, timeout=5, check=True)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def summary(cfg: DictConfig, results: dict[str, Any], run_dir: Path) -> str:
    if choice(cfg.mode) == "eval":
        lines = [f"evaluated {cfg.checkpoint} on {cfg.dataset.name}"]
    else:
        lines = [f"{cfg.method.name}: {results['meta/student_arch']} on {cfg.dataset.name}, "
                 f"{cfg.epochs} epochs"]
    if "teacher/test/acc" in results:
        lines.append(f"  teacher ({results.get('meta/teacher_arch', cfg.teacher.arch)}) test acc  "
                     f"{results['teacher/test/acc']:6.2f} %")
    best = f"  (best epoch {results['test/best_acc']:.2f} %)" if "test/best_acc" in results else ""
    who = "model" if choice(cfg.mode) == "eval" else f"student ({results['meta/student_arch']})"
    lines.append(f"  {who} test acc  {results['test/acc']:6.2f} %{best}")
    for key in sorted(k for k in results if k.startswith("peer") and k.endswith("/test/acc")):
        lines.append(f"  {key.removesuffix('/test/acc')} test acc  {results[key]:6.2f} %")
    if "test/agreement" in results:
        lines.append(f"  student-teacher agreement  {results['test/agreement']:6.2f} %")
    robust = sorted(k for k in results if k.startswith(("pgd/", "fgsm/")))
    if robust:
        lines.append("  robust acc  " + ", ".join(
            f"{k.removesuffix('/acc')} {results[k]:.1f} %" for k in robust))
    if "corrupt/mean_acc" in results:
        lines.append(f"  mean corruption acc  {results['corrupt/mean_acc']:.2f} %")
    shifted = sorted(k for k in results if k.startswith("ood/"))
    if shifted:
        lines.append("  shift / OOD  " + ", ".join(
            f"{k.removeprefix('ood/')} {results[k]:.1f} %" for k in shifted))
    lines.append(f"  calibration error (ECE)  {results['calib/ece']:.2f} %")
    if "synth/img_s" in results:
        lines.append(f"  synthesis  {results['synth/images']} images, "
                     f"{results['synth/img_s']:.1f} img/s; teacher acc on them "
                     f"{results['synth/teacher_acc']:.2f} %")
    if "train/img_s" in results:
        lines.append(f"  training speed  {results['train/img_s']:.0f} img/s")
    lines.append(f"  run directory  {run_dir}")
    return "\n".join(lines)


def expand_home(args: list[str]) -> list[str]:
    """`key=~/path` as a shell would expand it: Hydra's override grammar has no `~` in values."""
    expanded = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and value.startswith("~") and not arg.startswith(("-", "~")):
            arg = f"{key}={os.path.expanduser(value)}"
        expanded.append(arg)
    return expanded


MULTIRUN_FLAGS = ("-m", "--multirun")
# Under torchrun, ranks other than 0 leave the run directory, its .hydra/ and its log to rank 0.
QUIET_RANK_OVERRIDES = ["hydra.run.dir=.", "hydra.output_subdir=null",
                        "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def main() -> None:
    sys.argv = expand_home(sys.argv)
    if distributed.launched_world_size() > 1:
        if any(arg in MULTIRUN_FLAGS for arg in sys.argv[1:]):
            sys.exit("kdrun: a sweep (-m) cannot run under torchrun: run the sweep without "
                     "torchrun, with hydra/launcher=submitit_slurm and "
                     "hydra.launcher.tasks_per_node=N for N processes per job")
        distributed.init()
        if not distributed.is_main():
            sys.argv += QUIET_RANK_OVERRIDES
    try:
        hydra_main()
    finally:
        distributed.shutdown()
    if SweepSummary.failed_jobs:
        sys.exit(1)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Returns the run's `objective` (what a sweeper such as Optuna optimises); None for a
    failed job of a sweep, whose error lands in its run directory while the sweep goes on
    (Optuna records None as a failed trial; NaN would stop its sweeper)."""
    distributed.init()  # a SLURM job with several tasks reaches here without main()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(distributed.from_main(lambda: hydra_cfg.runtime.output_dir))
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run = evaluate_checkpoint if choice(cfg.mode) == "eval" else train
    try:
        results = run(cfg, run_dir, sweep_group=hydra_cfg.sweep.dir if multirun else None,
                      run_name=hydra_cfg.job.override_dirname or None)
        if not distributed.is_main():  # rank 0 reports for the run
            return None
        log.info("done\n%s", summary(cfg, results, run_dir))
        return objective(cfg, results)
    except KdrunError as err:
        log.error("%s", err)
        record_error(run_dir, f"{err}\n")
        if multirun:  # the other jobs of the sweep go on
            return None
        sys.exit(1)
    except Exception:
        record_error(run_dir, traceback.format_exc())
        if not multirun:
            raise
        log.exception("this job failed (the sweep goes on); see %s", run_dir / "error.txt")
        return None


def objective(cfg: DictConfig, results: dict[str, Any]) -> float:
    if cfg.objective not in results:
        known = ", ".join(sorted(k for k in results if not k.startswith("meta/"))[:8])
        raise KdrunError(f"objective={cfg.objective} is not a key of this run's results: "
                         f"choose one of {known}, ...")
    return float(results[cfg.objective])


def record_error(run_dir: Path, text: str) -> None:
    """error.txt in the run directory (error-rank<N>.txt for the other ranks of a torchrun)."""
    rank = distributed.rank()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ("error.txt" if rank == 0 else f"error-rank{rank}.txt")).write_text(text)


if __name__ == "__main__":
    main()
