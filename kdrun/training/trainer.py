"""The training loop. It knows the method protocol only: batches go to `training_step`, the
returned 'loss' is minimised, scalar extras are logged. Metrics accumulate on the device and
are read once per log interval, so the step has no host sync. Under torch.distributed each
rank trains on its share of the global batch (see runtime/distributed.py); metrics are summed
over ranks and only rank 0 writes."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from kdrun.data import BatchMix, ImageData, make_loader
from kdrun.errors import Interrupted, TrainingDiverged
from kdrun.evaluation.accuracy import evaluate
from kdrun.methods import Method
from kdrun.methods.base import Schedule
from kdrun.models.prepare import prepare
from kdrun.runtime import checkpoint, distributed
from kdrun.runtime.device import synchronize
from kdrun.runtime.run import Run
from kdrun.training.optimizers import Optimizers
from kdrun.training.step import EpochSums, Stepper, why_not_captured

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "last.pt"


@dataclass
class Recipe:
    """What a training run is: how long, in what batches, with which optimiser and schedule.
    `mix`: batches drawn from two parts of the training split at a ratio; `schedule`: the
    schedule's length when it is not these epochs (one shared by stages)."""
    epochs: int
    batch_size: int
    optim: DictConfig
    sched: DictConfig
    mix: BatchMix | None = None
    schedule: Schedule | None = None


@dataclass
class _Progress:
    epoch: int = 0  # the next epoch to run
    step: int = 0
    best_acc: float = -math.inf  # the best test accuracy: selected on the test set
    best_val_acc: float = -math.inf
    test_acc_at_best_val: float = math.nan  # the honest pick: the epoch validation chose
    best_val_epoch: int = 0
    images: int = 0  # trained on, over the whole run (resumes included)
    seconds: float = 0.0  # spent training, likewise

    def record(self, evaluated: dict[str, float]) -> None:
        self.best_acc = max(self.best_acc, evaluated["test/acc"])
        if evaluated.get("val/acc", -math.inf) > self.best_val_acc:
            self.best_val_acc = evaluated["val/acc"]
            self.test_acc_at_best_val = evaluated["test/acc"]
            self.best_val_epoch = self.epoch

    def results(self) -> dict[str, float]:
        selected = {"test/best_acc": self.best_acc}
        if self.best_val_epoch:
            selected.update({"val/best_acc": self.best_val_acc,
                             "test/acc_at_best_val": self.test_acc_at_best_val,
                             "val/best_epoch": self.best_val_epoch})
        return selected


class Pace:
    """A fit's seconds per epoch, evaluations included: from its start until its first epoch
    is done, then from the end of that epoch, which pays for compilation and capture (on a GPU
    it can take ten times a later one)."""

    def __init__(self, start: float, epoch: int):
        self.since, self.epoch, self.first_done = start, epoch, False

    def per_epoch(self, now: float, epoch: int) -> float:
        """The pace at `now`, when `epoch` epochs are done (called once per finished epoch)."""
        pace = (now - self.since) / (epoch - self.epoch)
        if not self.first_done:
            self.since, self.epoch, self.first_done = now, epoch, True
        return pace


def duration(seconds: float) -> str:
    """'45s', '12m05s', '3h07m'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Trainer:
    """Trains a method for the run `run` (its settings under trainer.*, its device, precision,
    directory, seed and sink). `label` prefixes progress lines ("teacher "); each stage of a
    multi-stage method keeps its own checkpoint file; `resume` defaults to trainer.resume;
    `later_epochs`: the training epochs of the stages after this one (for the run's time left).
    After `fit`, `optimizers` holds the optimisers it stepped, for a stage that continues them."""

    def __init__(self, run: Run, label: str = "", checkpoint_name: str = CHECKPOINT_NAME,
                 resume: bool | None = None, later_epochs: int = 0):
        self.run = run
        self.cfg = run.cfg.trainer
        self.label = label
        self.later_epochs = later_epochs  # of the run's later stages, for its time left
        self.checkpoint_name = checkpoint_name
        self.resume = self.cfg.resume if resume is None else resume

    @property
    def checkpoint_path(self) -> Path:
        return self.run.dir / "checkpoints" / self.checkpoint_name

    def fit(self, method: Method, data: ImageData, recipe: Recipe, augment: bool = True,
            optimizers: Optimizers | None = None) -> dict[str, float]:
        """Trains `method`, evaluating every `eval_every` epochs and at the end; returns the
        final metrics (test/*, teacher/test/* when the method has a teacher, train/*).
        `augment`: the loader applies the data set's crop and flip; `optimizers`: go on with
        these (and their schedule) instead of starting fresh ones from the recipe."""
        run = self.run
        train_loader = make_loader(data.train, recipe.batch_size, run, train=True,
                                   augment=augment, shard=True, mix=recipe.mix,
                                   with_indices=method.needs_indices)
        test_loader = make_loader(data.test, self.cfg.eval_batch_size, run, train=False,
                                  shard=True)
        val_loader = None if data.val is None else make_loader(
            data.val, self.cfg.eval_batch_size, run, train=False, shard=True)
        if self.cfg.sync_bn:
            distributed.synchronise_batchnorm(method)
        prepare(method, run)
        distributed.copy_from_main(method)  # networks a stage built start equal on every rank
        if optimizers is None:
            steps_per_epoch = len(train_loader)
            length = recipe.schedule or Schedule(steps_per_epoch * recipe.epochs, steps_per_epoch)
            optimizers = Optimizers(method, recipe.optim, recipe.sched, length)
        self.optimizers = optimizers
        checkpoint.remove_stale_temporaries(self.checkpoint_path.parent)
        progress = _Progress()
        if self.resume:
            progress = self._resume(method, optimizers, recipe.epochs)
        stepper = self._stepper(method, optimizers)

        last: dict[str, float] = {}
        test_metrics: dict[str, float] = {}
        max_steps = self.cfg.max_steps or math.inf
        pace = Pace(time.perf_counter(), progress.epoch)
        try:
            while progress.epoch < recipe.epochs and progress.step < max_steps:
                train_loader.set_epoch(progress.epoch)
                start = time.perf_counter()
                last, complete = self._train_epoch(method, train_loader, stepper, progress,
                                                   recipe.epochs, max_steps)
                synchronize(run.device)
                distributed.average_buffers(method)
                progress.seconds += time.perf_counter() - start
                progress.images += last.pop("images")
                progress.epoch += complete
                finished = progress.epoch == recipe.epochs or progress.step >= max_steps
                evaluated: dict[str, float] = {}  # only this epoch's evaluation is logged with it
                if finished or (self.cfg.eval_every and progress.epoch % self.cfg.eval_every == 0):
                    evaluated = self._evaluate(method, test_loader, val_loader,
                                               with_teacher=finished)
                    test_metrics = evaluated
                    progress.record(evaluated)
                run.sink.log({"epoch": progress.epoch, **last, **evaluated}, progress.step)
                shown = f"{progress.epoch}/{recipe.epochs}" if complete else (
                    f"{progress.epoch + 1}/{recipe.epochs} (stopped at trainer.max_steps)")
                eta = ""
                if complete and not finished:
                    per_epoch = pace.per_epoch(time.perf_counter(), progress.epoch)
                    left = per_epoch * (recipe.epochs - progress.epoch)
                    eta = f"  eta {duration(left)}"
                    if self.later_epochs:
                        eta += f", run ~{duration(left + per_epoch * self.later_epochs)}"
                log.info("%sepoch %s  loss %.4f  train acc %.2f  test acc %s%s", self.label, shown,
                         last["train/loss"], last["train/acc"],
                         f"{evaluated['test/acc']:.2f}" if evaluated else "-", eta)
                if complete:  # a checkpoint always marks an epoch boundary, so resume is exact
                    self._save(method, optimizers, progress)
        except KeyboardInterrupt:
            saved = (f"its last checkpoint is epoch {progress.epoch}" if progress.epoch
                     else "no epoch had finished")
            raise Interrupted(f"{self.label}training interrupted in epoch {progress.epoch + 1} "
                              f"of {recipe.epochs} (step {progress.step}); {saved}") from None
        if not test_metrics:  # resumed a run that had already finished
            test_metrics = self._evaluate(method, test_loader, val_loader, with_teacher=True)
            progress.record(test_metrics)
        return {**test_metrics, **progress.results(), **last,
                "train/img_s": progress.images / progress.seconds if progress.seconds else 0.0,
                "train/time_s": progress.seconds, "train/steps": progress.step,
                "train/captured": stepper.captured}

    def _evaluate(self, method: Method, loader, val_loader,
                  with_teacher: bool) -> dict[str, float]:
        """The evaluated model's test metrics (and its teacher's, at the end), its validation
        accuracy, loss and top-5 when there is a validation split, plus every peer's test
        metrics under its name."""
        teacher = method.teacher if with_teacher else None
        bins = self.run.cfg.eval.calibration_bins
        results = evaluate(method.eval_model(), loader, self.run.autocast, teacher, bins)
        if val_loader is not None:
            val = evaluate(method.eval_model(), val_loader, self.run.autocast, bins=bins)
            results.update({key.replace("test/", "val/", 1): value
                            for key, value in val.items() if key.startswith("test/")})
        for name, model in method.peer_models().items():
            peer = evaluate(model, loader, self.run.autocast, bins=bins)
            results.update({f"{name}/{key}": value for key, value in peer.items()})
        return results

    def _stepper(self, method: Method, optimizers: Optimizers) -> Stepper:
        """Captured as a CUDA graph where the run asks for it and the method allows it."""
        capture = self.run.cuda_graph
        if capture:
            reason = why_not_captured(method, optimizers, self.run)
            if reason:
                log.info("%straining step not captured as a CUDA graph: %s; training eagerly",
                         self.label, reason)
                capture = False
        return Stepper(method, optimizers, self.run, EpochSums(self.run.device), capture)

    def _train_epoch(self, method, loader, stepper: Stepper, progress: _Progress,
                     epochs: int, max_steps: float) -> tuple[dict[str, float], bool]:
        """One pass over the training batches, or up to `max_steps`; says if it completed."""
        method.train()
        epoch = progress.epoch
        sums = stepper.sums
        sums.reset()
        device = self.run.device
        batches, interval_start, interval_images = 0, time.perf_counter(), 0
        world = distributed.world_size()
        bar = tqdm(total=len(loader), desc=f"{self.label}epoch {epoch + 1}/{epochs}",
                   disable=None if self.cfg.progress and distributed.is_main() else True,
                   leave=False)
        with logging_redirect_tqdm():
            for batch in loader:
                out = stepper(*batch)
                progress.step += 1
                interval_images += len(batch[0]) * world
                batches += 1
                bar.update()
                if progress.step % self.cfg.log_every == 0:
                    keys = list(sums.totals)
                    self._stop_if_diverged(dict(zip(keys, distributed.sum_across_ranks(
                        torch.stack([sums.totals[k] for k in keys])).tolist())), progress)
                    elapsed = time.perf_counter() - interval_start
                    # the batch's loss: train/loss is the epoch's mean, in the epoch's row
                    row = {"train/lr": stepper.optimizers.lr,
                           "train/batch_loss": out["loss"].item(),
                           "train/img_s_interval": interval_images / elapsed}
                    self.run.sink.log(row, progress.step)
                    bar.set_postfix(loss=f"{row['train/batch_loss']:.3f}",
                                    acc=f"{100 * sums.correct.item() / sums.seen:.1f}",
                                    img_s=f"{row['train/img_s_interval']:.0f}")
                    interval_start, interval_images = time.perf_counter(), 0
                if progress.step >= max_steps:
                    break
        bar.close()
        complete = batches == len(loader)
        keys = list(sums.totals)  # the same on every rank: the method's step decides them
        totals = distributed.sum_across_ranks(torch.stack(
            [sums.totals[k] for k in keys]
            + [torch.tensor(float(sums.counts.get(k, 0)), device=device) for k in keys]
            + [sums.correct.float(), torch.tensor(float(sums.seen), device=device)])).tolist()
        self._stop_if_diverged(dict(zip(keys, totals)), progress)  # before the epoch's checkpoint
        metrics = {f"train/{k}": totals[i] / totals[len(keys) + i] for i, k in enumerate(keys)
                   if totals[len(keys) + i]}
        metrics["train/acc"] = 100 * totals[-2] / totals[-1]
        metrics["images"] = int(totals[-1])
        return metrics, complete

    def _stop_if_diverged(self, sums: dict[str, float], progress: _Progress) -> None:
        """`sums`: each loss term summed over this epoch so far and over the ranks (so every
        rank decides alike). A NaN or infinite one stops the run, so no checkpoint of a
        diverged network is written and no time is spent training it."""
        bad = [f"{k} {v}" for k, v in sums.items() if not math.isfinite(v)]
        if bad:
            saved = (f"the last good checkpoint is {self.checkpoint_path} (epoch "
                     f"{progress.epoch})" if progress.epoch else "no epoch had finished")
            raise TrainingDiverged(
                f"{self.label}training diverged in epoch {progress.epoch + 1} by step "
                f"{progress.step}: {', '.join(bad)}; {saved}. Lower the learning rate "
                f"(optim.lr) or check the method's settings")

    def _save(self, method, optimizers: Optimizers, progress: _Progress) -> None:
        """Every rank's random state is kept (each draws its own noise), written by rank 0."""
        rng = {"torch": torch.get_rng_state()}
        if self.run.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.run.device)
        state = {"epoch": progress.epoch, "step": progress.step,
                 "progress": dataclasses.asdict(progress), "method": method.state_dict(),
                 "optimizers": optimizers.state_dict(), "rng": distributed.every_rank(rng),
                 "record": self.run.sink.position()}
        checkpoint.save_atomic(state, self.checkpoint_path)

    def _resume(self, method, optimizers: Optimizers, epochs: int) -> _Progress:
        path = self.checkpoint_path
        state = distributed.from_main(lambda: checkpoint.load(path) if path.is_file() else None)
        if state is None:
            log.info("trainer.resume: no checkpoint at %s, starting from scratch", path)
            return _Progress()
        method.load_state_dict(state["method"])
        optimizers.load_state_dict(state["optimizers"])
        rng = state["rng"][distributed.rank() % len(state["rng"])]  # N may have changed
        torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and self.run.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.run.device)
        if state["epoch"] < epochs:  # its rows after the checkpoint are logged again (those
            self.run.sink.rewind(state.get("record", {}))  # after a finished stage are not)
        log.info("resumed from %s at epoch %d (step %d)", path, state["epoch"], state["step"])
        if "progress" in state:
            return _Progress(**state["progress"])
        return _Progress(state["epoch"], state["step"], state["best_acc"])  # before val splits
