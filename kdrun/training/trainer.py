"""The training loop. It knows the method protocol only: batches go to `training_step`, the
returned 'loss' is minimised, scalar extras are logged. Metrics accumulate on the device and
are read once per log interval, so the step has no host sync. Under torch.distributed each
rank trains on its share of the global batch (see runtime/distributed.py); metrics are summed
over ranks and only rank 0 writes. One loop trains one run, or the members of a pack
(hydra/launcher=packed): several runs on one data stream, each with its own networks,
optimisers, random stream, metrics, checkpoints and failures."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from kdrun.data import BatchMix, ImageData, make_loader
from kdrun.errors import Interrupted, TrainingDiverged
from kdrun.evaluation.accuracy import evaluate
from kdrun.methods import Method
from kdrun.methods.base import Schedule, share_teacher_outputs
from kdrun.models.prepare import prepare
from kdrun.runtime import checkpoint, distributed
from kdrun.runtime.device import RandomStream, random_state, set_random_state, synchronize
from kdrun.runtime.run import Run
from kdrun.training.optimizers import Optimizers
from kdrun.training.step import EpochSums, Learner, Stepper, why_not_captured

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
        [results] = fit_together([self], [method], data, recipe, augment, optimizers)
        return results

    def _start(self, method: Method, recipe: Recipe, steps_per_epoch: int,
               optimizers: Optimizers | None, random: RandomStream | None,
               index: int = 0) -> _Member:
        """The member this trainer's run is in a fit: its method on the device, its optimisers,
        and its progress (from its checkpoint when resuming)."""
        if self.cfg.sync_bn:
            distributed.synchronise_batchnorm(method)
        prepare(method, self.run)
        distributed.copy_from_main(method)  # networks a stage built start equal on every rank
        if optimizers is None:
            length = recipe.schedule or Schedule(steps_per_epoch * recipe.epochs, steps_per_epoch)
            optimizers = Optimizers(method, recipe.optim, recipe.sched, length)
        self.optimizers = optimizers
        checkpoint.remove_stale_temporaries(self.checkpoint_path.parent)
        learner = Learner(method, optimizers, EpochSums(self.run.device), random)
        member = _Member(index, self, learner, _Progress())
        if self.resume:
            member.progress = self._resume(member, recipe.epochs)
        return member

    def _close_epoch(self, member: _Member, epoch_metrics: dict[str, float], complete: bool,
                     seconds: float, recipe: Recipe, max_steps: float, loaders) -> None:
        """The member's epoch (or its part up to trainer.max_steps) counted, evaluated when
        due, and logged to its sink."""
        method, progress = member.learner.method, member.progress
        distributed.average_buffers(method)
        progress.seconds += seconds
        progress.images += epoch_metrics.pop("images")
        progress.epoch += complete
        member.last, member.complete = epoch_metrics, complete
        finished = progress.epoch == recipe.epochs or progress.step >= max_steps
        evaluated: dict[str, float] = {}  # only this epoch's evaluation is logged with it
        if finished or (self.cfg.eval_every and progress.epoch % self.cfg.eval_every == 0):
            evaluated = self._evaluate(method, *loaders, with_teacher=finished)
            member.test_metrics = evaluated
            progress.record(evaluated)
        member.evaluated, member.finished = evaluated, finished
        self.run.sink.log({"epoch": progress.epoch, **epoch_metrics, **evaluated}, progress.step)

    def _report_epoch(self, member: _Member, epochs: int, per_epoch: float | None) -> None:
        """The member's progress line (with its time left, at the fit's pace) and, at an epoch's
        end, its checkpoint."""
        progress, evaluated = member.progress, member.evaluated
        shown = f"{progress.epoch}/{epochs}" if member.complete else (
            f"{progress.epoch + 1}/{epochs} (stopped at trainer.max_steps)")
        eta = ""
        if member.complete and not member.finished and per_epoch is not None:
            left = per_epoch * (epochs - progress.epoch)
            eta = f"  eta {duration(left)}"
            if self.later_epochs:
                eta += f", run ~{duration(left + per_epoch * self.later_epochs)}"
        log.info("%sepoch %s  loss %.4f  train acc %.2f  test acc %s%s", self.label, shown,
                 member.last["train/loss"], member.last["train/acc"],
                 f"{evaluated['test/acc']:.2f}" if evaluated else "-", eta)
        if member.complete:  # a checkpoint always marks an epoch boundary, so resume is exact
            self._save(member)

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

    def _log_interval(self, member: _Member, out: dict[str, torch.Tensor],
                      tally: _Tally) -> None:
        """Every `log_every` steps: a divergence check, and a row of the batch's loss, the
        learning rate and the images per second since the last row."""
        sums, progress = member.learner.sums, member.progress
        keys = list(sums.totals)
        self._stop_if_diverged(dict(zip(keys, distributed.sum_across_ranks(
            torch.stack([sums.totals[k] for k in keys])).tolist())), progress)
        elapsed = time.perf_counter() - tally.interval_start
        # the batch's loss: train/loss is the epoch's mean, in the epoch's row
        row = {"train/lr": member.learner.optimizers.lr,
               "train/batch_loss": out["loss"].item(),
               "train/img_s_interval": tally.interval_images / elapsed}
        self.run.sink.log(row, progress.step)
        tally.shown = {"loss": f"{row['train/batch_loss']:.3f}",
                       "acc": f"{100 * sums.correct.item() / sums.seen:.1f}",
                       "img_s": f"{row['train/img_s_interval']:.0f}"}
        tally.interval_start, tally.interval_images = time.perf_counter(), 0

    def _epoch_metrics(self, member: _Member) -> dict[str, float]:
        """The epoch's mean of each loss term, its train accuracy and its image count, summed
        over the ranks; a divergence check before the epoch's checkpoint."""
        sums, device = member.learner.sums, self.run.device
        keys = list(sums.totals)  # the same on every rank: the method's step decides them
        totals = distributed.sum_across_ranks(torch.stack(
            [sums.totals[k] for k in keys]
            + [torch.tensor(float(sums.counts.get(k, 0)), device=device) for k in keys]
            + [sums.correct.float(), torch.tensor(float(sums.seen), device=device)])).tolist()
        self._stop_if_diverged(dict(zip(keys, totals)), member.progress)
        metrics = {f"train/{k}": totals[i] / totals[len(keys) + i] for i, k in enumerate(keys)
                   if totals[len(keys) + i]}
        metrics["train/acc"] = 100 * totals[-2] / totals[-1]
        metrics["images"] = int(totals[-1])
        return metrics

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

    def _save(self, member: _Member) -> None:
        """Every rank's random state is kept (each draws its own noise), written by rank 0; a
        pack's member keeps its own stream's."""
        learner, progress = member.learner, member.progress
        random = learner.random.state if learner.random else random_state(self.run.device)
        state = {"epoch": progress.epoch, "step": progress.step,
                 "progress": dataclasses.asdict(progress), "method": learner.method.state_dict(),
                 "optimizers": learner.optimizers.state_dict(),
                 "rng": distributed.every_rank(random), "record": self.run.sink.position()}
        checkpoint.save_atomic(state, self.checkpoint_path)

    def _resume(self, member: _Member, epochs: int) -> _Progress:
        path = self.checkpoint_path
        state = distributed.from_main(lambda: checkpoint.load(path) if path.is_file() else None)
        if state is None:
            log.info("%strainer.resume: no checkpoint at %s, starting from scratch",
                     self.label, path)
            return _Progress()
        learner = member.learner
        learner.method.load_state_dict(state["method"])
        learner.optimizers.load_state_dict(state["optimizers"])
        random = state["rng"][distributed.rank() % len(state["rng"])]  # N may have changed
        if learner.random:
            learner.random.state = random
        else:
            set_random_state(random, self.run.device)
        if state["epoch"] < epochs:  # its rows after the checkpoint are logged again (those
            self.run.sink.rewind(state.get("record", {}))  # after a finished stage are not)
        log.info("%sresumed from %s at epoch %d (step %d)", self.label, path, state["epoch"],
                 state["step"])
        if "progress" in state:
            return _Progress(**state["progress"])
        return _Progress(state["epoch"], state["step"], state["best_acc"])  # before val splits


@dataclass
class _Member:
    """One run's part of a fit: its trainer, its share of each step, and how far it got."""
    index: int  # in the fit
    trainer: Trainer
    learner: Learner
    progress: _Progress
    last: dict[str, float] = field(default_factory=dict)  # the latest epoch's training metrics
    test_metrics: dict[str, float] = field(default_factory=dict)  # the latest evaluation's
    evaluated: dict[str, float] = field(default_factory=dict)  # this epoch's evaluation
    complete: bool = False  # its latest epoch ran to the end
    finished: bool = False


@dataclass
class _Tally:
    """A member's count within one epoch."""
    batches: int = 0
    interval_start: float = field(default_factory=time.perf_counter)
    interval_images: int = 0
    shown: dict[str, str] = field(default_factory=dict)  # the progress bar's figures


def fit_together(trainers: list[Trainer], methods: list[Method], data: ImageData,
                 recipe: Recipe, augment: bool = True, optimizers: Optimizers | None = None,
                 randoms: list[RandomStream] | None = None,
                 isolate: bool = False) -> list[dict[str, float] | Exception]:
    """Trains each method for its trainer's run on one stream of batches: one run (`Trainer.fit`)
    or the members of a pack, which share the first run's loaders, device and seed and, when
    they have one, their teacher's forward pass. Each member keeps its own optimisers (a lone
    run may go on with `optimizers`), checkpoints, evaluations, sink and - given `randoms`,
    where the step is not captured as a CUDA graph - its own random stream. Members resumed
    at different epochs catch up in turn. Returns each member's final metrics; with
    `isolate` (a pack) a member that fails - diverges, or its start, step, evaluation or
    checkpoint raises - gets its exception there instead while the others go on. Ctrl-C stops
    them all (Interrupted)."""
    if optimizers is not None and len(trainers) > 1:
        raise ValueError("optimizers to go on with belong to one run, not to a pack")
    run, cfg = trainers[0].run, trainers[0].cfg
    train_loader = make_loader(data.train, recipe.batch_size, run, train=True,
                               augment=augment, shard=True, mix=recipe.mix,
                               with_indices=any(m.needs_indices for m in methods))
    test_loader = make_loader(data.test, cfg.eval_batch_size, run, train=False, shard=True)
    val_loader = None if data.val is None else make_loader(
        data.val, cfg.eval_batch_size, run, train=False, shard=True)
    loaders = (test_loader, val_loader)
    share_teacher_outputs(methods)
    guard = _Guard(isolate)
    outcomes: list[dict[str, float] | Exception | None] = [None] * len(trainers)
    members = []
    for i, (trainer, method) in enumerate(zip(trainers, methods)):
        with guard(outcomes, i):
            members.append(trainer._start(method, recipe, len(train_loader), optimizers,
                                          randoms[i] if randoms else None, index=i))
    capture = bool(members) and _captures(run, members)
    if capture and randoms:  # replays draw from the one default CUDA generator
        set_random_state(members[0].learner.random.state, run.device)
        for member in members:
            member.learner.random = None
    stepper = Stepper([m.learner for m in members], run, capture, isolate)
    max_steps = cfg.max_steps or math.inf

    def due(member: _Member) -> bool:
        return (member.learner.failure is None and member.progress.epoch < recipe.epochs
                and member.progress.step < max_steps)

    pace = Pace(time.perf_counter(), min((m.progress.epoch for m in members), default=0))
    try:
        while stepping := _next_epoch([m for m in members if due(m)]):
            epoch = stepping[0].progress.epoch
            train_loader.set_epoch(epoch)
            start = time.perf_counter()
            tallies = _train_epoch(stepping, train_loader, stepper, recipe.epochs, max_steps,
                                   guard)
            synchronize(run.device)
            seconds = time.perf_counter() - start
            closed = []
            for member in stepping:
                with guard.member(member):
                    if member.learner.failure is None:
                        metrics = member.trainer._epoch_metrics(member)
                        member.trainer._close_epoch(
                            member, metrics, tallies[id(member)].batches == len(train_loader),
                            seconds, recipe, max_steps, loaders)
                        closed.append(member)
            per_epoch = None
            if any(m.complete and not m.finished for m in closed):
                per_epoch = pace.per_epoch(time.perf_counter(), epoch + 1)
            for member in closed:
                with guard.member(member):
                    member.trainer._report_epoch(member, recipe.epochs, per_epoch)
        for member in members:
            with guard(outcomes, member.index):
                outcomes[member.index] = _outcome(member, loaders, stepper.captured)
    except KeyboardInterrupt:
        raise Interrupted(_where_interrupted(members, recipe.epochs)) from None
    finally:
        for method in methods:  # the last batch and its logits are not kept past the fit
            method.shared_teacher = None
    return outcomes


class _Guard:
    """Where a pack isolates its members' failures: the exception becomes the member's
    outcome (or its learner's failure, while it trains) and the others go on. For a lone run
    (`isolate` false) every exception propagates as it is."""

    def __init__(self, isolate: bool):
        self.isolate = isolate

    @contextlib.contextmanager
    def __call__(self, outcomes: list, index: int):
        try:
            yield
        except Exception as error:
            if not self.isolate:
                raise
            outcomes[index] = error

    @contextlib.contextmanager
    def member(self, member: _Member):
        try:
            yield
        except Exception as error:
            if not self.isolate:
                raise
            member.learner.failure = error


def _where_interrupted(members: list[_Member], epochs: int) -> str:
    """Ctrl-C's message: where the run stopped, or (a pack) that each member resumes from its
    own last checkpoint."""
    if len(members) != 1:
        return (f"training of a pack of {len(members)} interrupted; each member resumes from "
                f"its own last checkpoint")
    progress, label = members[0].progress, members[0].trainer.label
    saved = (f"its last checkpoint is epoch {progress.epoch}" if progress.epoch
             else "no epoch had finished")
    return (f"{label}training interrupted in epoch {progress.epoch + 1} of {epochs} (step "
            f"{progress.step}); {saved}")


def _next_epoch(due: list[_Member]) -> list[_Member]:
    """The members that train in the next pass: those furthest behind (after a resume the
    others wait for them at their epoch)."""
    if not due:
        return []
    epoch = min(m.progress.epoch for m in due)
    return [m for m in due if m.progress.epoch == epoch]


def _captures(run: Run, members: list[_Member]) -> bool:
    """Whether the fit's step is captured as a CUDA graph: where the run asks for it and every
    member's method and optimisers allow it."""
    if not run.cuda_graph:
        return False
    for member in members:
        reason = why_not_captured(member.learner.method, member.learner.optimizers, run)
        if reason:
            log.info("%straining step not captured as a CUDA graph: %s; training eagerly",
                     member.trainer.label, reason)
            return False
    return True


def _train_epoch(stepping: list[_Member], loader, stepper: Stepper, epochs: int,
                 max_steps: float, guard: _Guard) -> dict[int, _Tally]:
    """One pass over the training batches for the `stepping` members, each up to `max_steps`;
    their tallies by id. In a pack, a member that diverges or fails drops out and the others
    go on."""
    lead = stepping[0]
    cfg = lead.trainer.cfg
    tallies = {id(m): _Tally() for m in stepping}
    for member in stepping:
        member.learner.method.train()
        member.learner.sums.reset()
    world = distributed.world_size()
    bar = tqdm(total=len(loader),
               desc=f"{lead.trainer.label}epoch {lead.progress.epoch + 1}/{epochs}",
               disable=None if cfg.progress and distributed.is_main() else True, leave=False)

    def active() -> list[_Member]:
        return [m for m in stepping if m.learner.failure is None and m.progress.step < max_steps]

    with logging_redirect_tqdm():
        for batch in loader:
            stepped = active()
            outs = stepper(*batch, active=[m.learner for m in stepped])
            for member, out in zip(stepped, outs):
                if out is None:  # its step failed
                    continue
                tally = tallies[id(member)]
                member.progress.step += 1
                tally.batches += 1
                tally.interval_images += len(batch[0]) * world
                if member.progress.step % cfg.log_every == 0:
                    with guard.member(member):
                        member.trainer._log_interval(member, out, tally)
                    if member is lead:
                        bar.set_postfix(**tally.shown, refresh=False)
            bar.update()
            if not active():
                break
    bar.close()
    return tallies


def _outcome(member: _Member, loaders, captured: bool) -> dict[str, float] | Exception:
    """A member's final metrics, or what stopped it."""
    learner, progress = member.learner, member.progress
    if learner.failure is not None:
        return learner.failure
    if not member.test_metrics:  # resumed a run that had already finished
        member.test_metrics = member.trainer._evaluate(learner.method, *loaders,
                                                       with_teacher=True)
        progress.record(member.test_metrics)
    return {**member.test_metrics, **progress.results(), **member.last,
            "train/img_s": progress.images / progress.seconds if progress.seconds else 0.0,
            "train/time_s": progress.seconds, "train/steps": progress.step,
            "train/captured": captured}
