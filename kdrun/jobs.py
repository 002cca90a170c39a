"""What one job does, as `kdrun` runs it: compose -> validate -> Run -> data -> teacher ->
student -> method -> stages -> evaluate -> sinks, for training (`train`) or for measuring a
saved model (`evaluate_checkpoint`). cli.py imports this module only when a job runs, so
--help, --cfg and tab completion stay quick."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from kdrun.data import ImageData, load_dataset, make_loader
from kdrun.errors import ConfigError
from kdrun.evaluation import EvaluationSuite, complete_eval_config
from kdrun.evaluation.accuracy import evaluate
from kdrun.methods import METHODS, Method, Networks, build_method, method_settings
from kdrun.methods.base import Stage
from kdrun.models import Classifier, build_model
from kdrun.models.files import load_classifier, save_model
from kdrun.models.prepare import prepare
from kdrun.runtime import checkpoint, distributed
from kdrun.runtime.device import RandomStream, seed_everything
from kdrun.runtime.run import Run
from kdrun.runtime.run_directory import claimed
from kdrun.sinks import build_sinks
from kdrun.training.optimizers import Optimizers
from kdrun.training.teachers import resolve_teacher
from kdrun.training.trainer import Recipe, Trainer, fit_together
from kdrun.validate import validate
from kdrun.weights import is_zoo, lookup, obtain

log = logging.getLogger("kdrun")


@contextlib.contextmanager
def start_run(cfg: DictConfig, run_dir: Path, sweep_group: str | None, run_name: str | None,
              data: ImageData | None = None):
    """What every run shares: its run directory claimed (run_directory.py), validation before
    any work, the run directory's record, the inputs (its data set read unless `data`, a
    pack's, is given), and the run object with its sinks (always closed). Yields (run, data,
    the evaluation suite).
    The sinks open once the inputs are read, so a missing data set opens no W&B run."""
    with claimed(run_dir, resume=cfg.trainer.resume):
        validate(cfg)
        record_method_defaults(cfg)
        record_teacher_settings(cfg)
        with open_dict(cfg.eval):
            complete_eval_config(cfg.eval)  # config.yaml shows each evaluation's settings
        if distributed.is_main():
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        data, evaluations = load_inputs(cfg, data)
        sink = build_sinks(cfg, run_dir, sweep_group, run_name)
        try:
            yield Run.start(cfg, run_dir, sink), data, evaluations
        finally:
            sink.close()


def record_method_defaults(cfg: DictConfig) -> None:
    """A method setting left null and filled in by the method (`sigma: null` -> 0.2) written
    into the config, so config.yaml and W&B show the value the run used - at the top-level key
    it interpolates (`sigma: ${sigma}`) when it has one, so both places agree."""
    used = dataclasses.asdict(method_settings(cfg.method))
    written = OmegaConf.to_container(cfg.method, resolve=False)
    for key, value in used.items():
        if key in cfg.method and cfg.method[key] is None and value is not None:
            source = re.fullmatch(r"\$\{(\w+)\}", str(written[key]))
            if source and source[1] in cfg:
                cfg[source[1]] = value
            else:
                cfg.method[key] = value


def record_teacher_settings(cfg: DictConfig) -> None:
    """What the method asks of its teacher's training (Method.teacher_settings: Fickle
    Teacher's teacher trained with its dropout) written into cfg.teacher, so the teacher is
    trained and cached with it and config.yaml shows it; a different value given by hand for
    the same key is a one-line error."""
    settings = method_settings(cfg.method)
    for key, value in METHODS.get(cfg.method.name).teacher_settings(settings).items():
        if cfg.teacher.checkpoint != "auto":
            raise ConfigError(f"method {cfg.method.name}'s settings train its teacher with "
                              f"teacher.{key}={value}, but teacher.checkpoint="
                              f"{cfg.teacher.checkpoint} loads one trained elsewhere: use "
                              f"teacher.checkpoint=auto, or change the method's setting")
        given = cfg.teacher[key]
        if given and given != value:
            raise ConfigError(f"teacher.{key}={given} contradicts method {cfg.method.name}, "
                              f"whose settings train its teacher with teacher.{key}={value}: "
                              f"drop teacher.{key} or change the method's setting")
        cfg.teacher[key] = value


def load_inputs(cfg: DictConfig, data: ImageData | None = None
                ) -> tuple[ImageData, EvaluationSuite]:
    """The data set (unless given) and the evaluations with their data sets (read up front: a
    missing one stops the run in seconds, not after training)."""
    with distributed.main_first():  # one download or decoding cache, then shared
        if data is None:
            data = load_dataset(cfg.dataset, cfg.cache_dir)
        return data, EvaluationSuite(cfg.eval, data, cfg.dataset, cfg.cache_dir)


ResolvedTeacher = tuple[Classifier, dict[str, Any]]  # the teacher, and where it came from


def build_run_method(run: Run, data: ImageData,
                     teacher: ResolvedTeacher | None = None) -> tuple[Method, dict[str, Any]]:
    """The method with its networks (the teacher resolved, trained first if need be, unless
    `teacher` - a pack's, shared - is given), and where its teacher came from, for
    results.json."""
    cfg = run.cfg
    provenance = {}
    if METHODS.get(cfg.method.name).needs_teacher:
        teacher, provenance = teacher or resolve_teacher(run, data)
    else:
        teacher = None
    seed_everything(cfg.seed)
    make_model = functools.partial(build_model, num_classes=cfg.dataset.num_classes,
                                   mean=cfg.dataset.mean, std=cfg.dataset.std,
                                   drop_rate=cfg.student.drop_rate)
    method = build_method(cfg.method, Networks(make_model(cfg.student.arch), teacher,
                                               make_model, cfg.teacher.output_shuffle,
                                               cfg.dataset.image_size))
    if distributed.world_size() > 1:  # the ranks' noise and dropout draws differ
        seed_everything(cfg.seed + 1_000_003 * distributed.rank())
    return prepare(method, run), provenance  # where work between stages runs


def train(cfg: DictConfig, run_dir: Path, sweep_group: str | None = None,
          run_name: str | None = None) -> dict[str, Any]:
    """One whole training run; returns the flat results that also land in results.json.
    Under torch.distributed every rank trains; rank 0 alone evaluates beyond the clean test
    set and writes the results."""
    with start_run(cfg, run_dir, sweep_group, run_name) as (run, data, evaluations):
        method, results = begin_training(run, data, evaluations)
        optimizers = None
        for stage in method.stages(data, cfg.epochs, run):
            results.update(stage.metrics)
            stage_results, optimizers = train_stage(run, method, stage,
                                                    optimizers if stage.continues else None)
            results.update(stage_results)
        if not distributed.is_main():
            return results
        return finish_training(run, method, data, evaluations, results)


def begin_training(run: Run, data: ImageData, evaluations: EvaluationSuite,
                   teacher: ResolvedTeacher | None = None) -> tuple[Method, dict[str, Any]]:
    """A training run up to its first step: the method built (with `teacher` when given) and
    checked against the data and the evaluations, and its results so far (provenance,
    teacher, method settings)."""
    cfg = run.cfg
    results = run_info(run)
    METHODS.get(cfg.method.name).check_data(method_settings(cfg.method), data)
    method, teacher_provenance = build_run_method(run, data, teacher)
    results.update(teacher_provenance)
    results.update(recorded_settings(method))
    evaluations.check_model(method.eval_model(), method.teacher)  # before training
    return method, results


def finish_training(run: Run, method: Method, data: ImageData, evaluations: EvaluationSuite,
                    results: dict[str, Any]) -> dict[str, Any]:
    """A trained run's networks saved, then evaluated; the results written to its sinks."""
    cfg, run_dir = run.cfg, run.dir
    student = method.eval_model()
    results["meta/student_arch"] = student.arch
    if method.teacher is not None:
        results["meta/teacher_arch"] = method.teacher.arch
    # the trained networks are saved before the evaluations, which a failure must not cost
    save_model(student, run_dir / "checkpoints" / "student.pt",
               meta={"test/acc": results["test/acc"], "dataset": cfg.dataset.name})
    for name, peer in method.peer_models().items():
        save_model(peer, run_dir / "checkpoints" / f"{name}.pt",
                   meta={"test/acc": results[f"{name}/test/acc"],
                         "dataset": cfg.dataset.name})
    results.update(evaluations.run(student, data, run, results, method.teacher))
    run.sink.results(results)
    return results


@dataclass
class PackedJob:
    """A job of a sweep trained in a pack: its config, where its run goes, and how the log
    tells it from the pack's other members (what it sets apart from them)."""
    cfg: DictConfig
    run_dir: Path
    sweep_group: str | None = None
    run_name: str | None = None
    label: str = ""


@dataclass
class _Started:
    """A pack's job once its run has started and its method is built."""
    index: int  # in the pack
    run: Run
    evaluations: EvaluationSuite
    method: Method
    results: dict[str, Any]
    random: RandomStream  # where its random stream stood once its method was built


def train_pack(jobs: list[PackedJob], pack_id: str) -> list[dict[str, Any] | BaseException]:
    """Jobs that share their data set, teacher, student architecture and recipe
    (launchers/packed.py groups them) trained together: the data read and each batch drawn
    and augmented once, the teacher resolved once and run once per batch, each student
    stepped in turn. Each member is still its own run: its run directory, config, sinks,
    checkpoints, evaluations and results, with `meta/packed` (the pack's size) and
    `meta/pack_id`, and its own random stream seeded as its lone run's, so in fp32 on a CPU
    it computes what it would alone. Returns each job's results, or the exception that
    stopped it while the others went on; Ctrl-C (or a failure no member owns) stops the
    members that had not finished, each with that exception."""
    outcomes: list[dict[str, Any] | BaseException | None] = [None] * len(jobs)
    try:
        with contextlib.ExitStack() as stack:
            started, data = _start_members(jobs, pack_id, stack, outcomes)
            if started:
                _train_members(started, data, [job.label for job in jobs], outcomes)
    except (KeyboardInterrupt, Exception) as stopped:
        outcomes = [stopped if outcome is None else outcome for outcome in outcomes]
    return outcomes


def _start_members(jobs: list[PackedJob], pack_id: str, stack: contextlib.ExitStack,
                   outcomes: list) -> tuple[list[_Started], ImageData | None]:
    """Each job's run started (the data read and the teacher resolved by the first that needs
    them) and its method built; a job that fails here gets its error as its outcome."""
    started, data, teacher = [], None, None
    for i, job in enumerate(jobs):
        try:
            run, data, evaluations = stack.enter_context(
                start_run(job.cfg, job.run_dir, job.sweep_group, job.run_name, data))
            if teacher is None and METHODS.get(run.cfg.method.name).needs_teacher:
                teacher = resolve_teacher(run, data)
            method, results = begin_training(run, data, evaluations, teacher)
        except Exception as error:  # this job stops here; the others go on
            outcomes[i] = error
            continue
        results.update({"meta/packed": len(jobs), "meta/pack_id": pack_id})
        started.append(_Started(i, run, evaluations, method, results,
                                RandomStream(run.device)))
    return started, data


def _train_members(members: list[_Started], data: ImageData, labels: list[str],
                   outcomes: list) -> None:
    """The pack's one stage, trained together; then each member's saving and evaluation."""
    lead = members[0].run
    stage = next(members[0].method.stages(data, lead.cfg.epochs, lead))
    for member in members[1:]:  # each method's own preparation for its stage (DKD's ramp)
        next(member.method.stages(data, member.run.cfg.epochs, member.run))
    recipe = Recipe(stage.epochs, lead.cfg.trainer.batch_size, lead.cfg.optim, lead.cfg.sched,
                    stage.mix, stage.schedule)
    trainers = [Trainer(m.run, label=f"[{labels[m.index] or m.index}] ") for m in members]
    trained = fit_together(trainers, [m.method for m in members], stage.data, recipe,
                           stage.augment, randoms=[m.random for m in members], isolate=True)
    for member, outcome in zip(members, trained):
        if not isinstance(outcome, Exception):
            try:
                outcome = finish_training(member.run, member.method, data, member.evaluations,
                                          {**member.results, **outcome})
            except Exception as error:
                outcome = error
        outcomes[member.index] = outcome


def recorded_settings(method: Method) -> dict[str, Any]:
    """The method's settings as the run used them (a default filled in included), as
    method/<key> in results.json."""
    return {f"method/{key}": value for key, value in dataclasses.asdict(method.settings).items()
            if isinstance(value, (bool, int, float, str))}


def train_stage(run: Run, method: Method, stage: Stage,
                optimizers: Optimizers | None) -> tuple[dict[str, Any], Optimizers]:
    """One stage's training (going on with `optimizers` when given); returns its metrics and
    the optimisers it stepped. A multi-stage method's stages each keep their checkpoints and
    their test metrics under the stage's name (round1/test/acc, checkpoints/round1.pt)."""
    cfg = run.cfg
    single = stage.name == "train"
    trainer = Trainer(run, label="" if single else f"{stage.name} ",
                      checkpoint_name="last.pt" if single else f"last-{stage.name}.pt",
                      later_epochs=stage.later_epochs)
    recipe = Recipe(stage.epochs, cfg.trainer.batch_size, cfg.optim, cfg.sched, stage.mix,
                    stage.schedule)
    results = trainer.fit(method, stage.data, recipe, stage.augment, optimizers)
    if not single:
        save_model(method.eval_model(), run.dir / "checkpoints" / f"{stage.name}.pt",
                   meta={"test/acc": results["test/acc"], "dataset": cfg.dataset.name})
        results.update({f"{stage.name}/{k}": v for k, v in results.items()
                        if k.startswith(("test/", "val/", "teacher/test/acc"))})
    return results, trainer.optimizers


def evaluate_checkpoint(cfg: DictConfig, run_dir: Path, sweep_group: str | None = None,
                        run_name: str | None = None) -> dict[str, Any]:
    """`mode=eval`: the evaluation suite on a saved model (`checkpoint=PATH`, or a published one,
    `zoo:NAME`, beside the accuracy its source reports), no training; the model is prepared as
    a training run prepares its student."""
    with start_run(cfg, run_dir, sweep_group, run_name) as (run, data, evaluations):
        results = run_info(run)
        path = Path(cfg.checkpoint).expanduser()
        if is_zoo(cfg.checkpoint):
            entry = lookup(cfg.checkpoint, "checkpoint")
            path = distributed.from_main(lambda: obtain(entry, cfg.teacher.cache_dir))
        model, meta = load_classifier(path, cfg.dataset.num_classes, cfg.dataset.mean,
                                      cfg.dataset.std)
        # a published file is known by its own digest, not by that of kdrun's conversion
        results["meta/model_sha256"] = meta.get("source_sha256") or checkpoint.sha256(path)
        if "reported_acc" in meta:
            results["meta/model_reported_acc"] = meta["reported_acc"]
        model = prepare(model, run)
        evaluations.check_model(model)
        loader = make_loader(data.test, cfg.trainer.eval_batch_size, run, train=False)
        results.update(evaluate(model, loader, run.autocast, bins=cfg.eval.calibration_bins))
        results.update(evaluations.run(model, data, run, results))
        run.sink.results(results)
    return results


def run_info(run: Run) -> dict[str, Any]:
    """Provenance, first in results.json; the metrics are added to it."""
    return {"meta/git_commit": git_commit(),
            **{f"meta/{key}": value for key, value in run.environment().items()}}


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
