"""`hydra/launcher=packed`: a sweep's jobs that can share their data and teacher trained
together in one process, several students at a time (`hydra.launcher.pack=N`, the most per
pack), each job still its own run (jobs.train_pack). Jobs of one pack may differ only in what
the loss and the student's own noise read (PACK_MEMBER_KEYS); the rest of their config - data
set, teacher, student architecture, epochs, batch, optimiser, schedule, seed - is one. Jobs
that cannot be packed run one at a time, as Hydra's basic launcher runs them, and the log says
why."""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in
# sys.modules, where dataclasses look string annotations up.
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("kdrun")

# What a pack's members may set apart: the loss's settings and the student's own noise (the
# method among the packable ones, with its settings, label noise included), the shuffling of
# the shared teacher's outputs, and what happens after training or beside it.
PACK_MEMBER_KEYS = ("alpha", "T", "sigma", "method", "teacher.output_shuffle", "objective",
                    "eval", "logger")


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.kdrun_launchers.packed.PackedLauncher"
    pack: int = 8  # the most jobs trained together in one pack


ConfigStore.instance().store(group="hydra/launcher", name="packed", node=PackedLauncherConf,
                             provider="kdrun")


def shared_part(cfg: DictConfig) -> dict[str, Any]:
    """What every member of a pack must have in common: the resolved config without the hydra
    node and without PACK_MEMBER_KEYS, flattened to dotted keys."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(task_config(cfg), resolve=True), "")
    return {key: value for key, value in flat.items()
            if not any(key == k or key.startswith(f"{k}.") for k in PACK_MEMBER_KEYS)}


def why_alone(cfg: DictConfig) -> str | None:
    """Why this job trains alone whatever the sweep, or None."""
    from kdrun.config import choice
    from kdrun.methods import METHODS

    if choice(cfg.mode) != "train":
        return f"mode={choice(cfg.mode)} trains nothing"
    name = cfg.method.name
    if name not in METHODS.names():
        return None  # its own run says what is wrong, in one line
    if not METHODS.get(name).packable:
        packable = ", ".join(n for n in METHODS.names() if METHODS.get(n).packable)
        return (f"method {name} cannot share a pack's data stream and teacher (packable: "
                f"{packable})")
    return None


def pack_size_problem(pack: Any) -> str | None:
    """What is wrong with a hydra.launcher.pack value, or None."""
    if isinstance(pack, int) and not isinstance(pack, bool) and pack >= 1:
        return None
    return (f"hydra.launcher.pack={pack} is not allowed: it is the most jobs trained together, "
            f"an integer >= 1 (1 trains each job alone)")


def dry_run_plan(jobs: list[list[str]], overrides: list[str]) -> list[str]:
    """How the packed launcher would pack a sweep's jobs (each given by its overrides), for
    `kdrun -m ... hydra/launcher=packed --dry-run`; nothing for another launcher."""
    if "hydra/launcher=packed" not in overrides:
        return []
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.launcher.pack=")]
    size: Any = given[-1] if given else PackedLauncherConf.pack
    try:
        size = int(size)
    except ValueError:
        pass  # said below
    problem = pack_size_problem(size)
    if problem:
        return [problem]
    from hydra import compose, initialize_config_module

    with initialize_config_module("kdrun.conf", version_base="1.3"):
        configs = [compose("config", overrides=[o for o in job if not o.startswith("hydra")])
                   for job in jobs]
    plan, notes = plan_packs(configs, size)
    return [f"trained in {len(plan)} pack{'s' * (len(plan) != 1)} of at most {size} "
            f"(hydra/launcher=packed): " + " | ".join(",".join(map(str, p)) for p in plan),
            *notes]


def plan_packs(configs: list[DictConfig], size: int) -> tuple[list[list[int]], list[str]]:
    """The sweep's jobs (by index) in packs of at most `size` - jobs with the same shared part,
    in sweep order, split into as few packs as `size` allows, of even sizes (a pack takes as
    long as its slowest member) - and singletons for the jobs that train alone; and the log's
    lines saying why jobs train apart."""
    groups: dict[str, list[int]] = {}
    parts: dict[str, dict[str, Any]] = {}
    plan, notes = [], []
    for i, cfg in enumerate(configs):
        reason = why_alone(cfg)
        if reason:
            notes.append(f"job {i} trains alone: {reason}")
            plan.append([i])
            continue
        part = shared_part(cfg)
        key = json.dumps(part, sort_keys=True, default=str)
        groups.setdefault(key, []).append(i)
        parts[key] = part
    if len(groups) > 1:
        keys = list(parts.values())
        differing = sorted({k for part in keys for k in part if
                            any(other.get(k) != part[k] for other in keys)})
        shown = ", ".join(differing[:6]) + (", ..." if len(differing) > 6 else "")
        notes.append(f"the sweep's jobs differ in {shown}, which the members of a pack share: "
                     f"they train in {len(groups)} groups, packed apart")
    for members in groups.values():  # as few packs as the size allows, as even as can be
        count = -(-len(members) // size)
        bounds = [len(members) * i // count for i in range(count + 1)]
        plan += [members[a:b] for a, b in zip(bounds, bounds[1:])]
    return sorted(plan), notes


class PackedLauncher(Launcher):
    def __init__(self, pack: int = 8) -> None:
        self.pack = pack
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        problem = pack_size_problem(self.pack)
        if problem:
            sys.exit(f"kdrun: {problem}")
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            config = self.hydra_context.config_loader.load_sweep_config(self.config,
                                                                        list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = idx
            configs.append(config)
        plan, notes = plan_packs(configs, self.pack)
        log.info("Launching %d jobs in %d pack%s of at most %d", len(configs), len(plan),
                 "s" * (len(plan) != 1), self.pack)
        for note in notes:
            log.info("  %s", note)
        returns: list[JobReturn | None] = [None] * len(configs)
        for pack in plan:
            if len(pack) == 1:
                shown = " ".join(filter_overrides(job_overrides[pack[0]]))
            else:  # what each member sets apart
                shown = "; ".join(" ".join(own) for own in own_overrides(
                    [configs[i] for i in pack]))
            log.info("  #%s: %s", ",".join(str(configs[i].hydra.job.num) for i in pack), shown)
            if len(pack) == 1:
                returns[pack[0]] = run_job(hydra_context=self.hydra_context,
                                           task_function=self.task_function,
                                           config=configs[pack[0]],
                                           job_dir_key="hydra.sweep.dir",
                                           job_subdir_key="hydra.sweep.subdir")
            else:
                for i, ret in zip(pack, self._train_pack([configs[i] for i in pack])):
                    returns[i] = ret
        return returns

    def _train_pack(self, configs: list[DictConfig]) -> list[JobReturn]:
        """One pack: each member's run directory and .hydra record made as run_job makes them,
        the members trained together (jobs.train_pack), then each one's outcome reported as
        a lone job's is (outcome.report_job; Ctrl-C names the sweep's resume command) and
        returned to the sweeper."""
        from kdrun.jobs import train_pack
        from kdrun.outcome import report_job

        outer = HydraConfig.instance().cfg
        callbacks = self.hydra_context.callbacks
        jobs, handlers, returns, stop = [], [], [], None
        try:
            for n, (config, own) in enumerate(zip(configs, own_overrides(configs))):
                jobs.append(self._start_member(config, own, handlers, first=n == 0))
                callbacks.on_job_start(config=config, task_function=self.task_function)
            outcomes = train_pack(jobs, ",".join(str(c.hydra.job.num) for c in configs))
            for config, job, outcome in zip(configs, jobs, outcomes):
                HydraConfig.instance().set_config(config)
                ret = JobReturn(overrides=list(config.hydra.overrides.task), cfg=job.cfg,
                                hydra_cfg=HydraConfig.instance().cfg, working_dir=os.getcwd(),
                                task_name=JobRuntime.instance().get("name"),
                                status=JobStatus.COMPLETED)
                try:
                    ret.return_value = report_job(job.cfg, config.hydra, job.run_dir,
                                                  reported(outcome), self.resume_command())
                except SystemExit as exit_:  # Ctrl-C: every member's directory says so first
                    stop = exit_
                callbacks.on_job_end(config=config, job_return=ret)
                returns.append(ret)
        finally:
            for handler in handlers:
                logging.getLogger().removeHandler(handler)
                handler.close()
            HydraConfig.instance().cfg = outer
        if stop is not None:
            raise stop
        return returns

    @staticmethod
    def _start_member(config: DictConfig, own: list[str], handlers: list[logging.Handler],
                      first: bool):
        """A member's run directory, its .hydra record and its log file, as run_job makes
        them (the first member's log set up as run_job sets it up, the others' beside it)."""
        from kdrun.jobs import PackedJob

        run_dir = Path(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = str(run_dir.absolute())
        HydraConfig.instance().set_config(config)
        run_dir.mkdir(parents=True, exist_ok=True)
        task_cfg = task_config(config)
        if config.hydra.output_subdir is not None:
            record = run_dir / str(config.hydra.output_subdir)
            record.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(task_cfg, record / "config.yaml")
            OmegaConf.save(HydraConfig.instance().cfg, record / "hydra.yaml")
            OmegaConf.save(config.hydra.overrides.task, record / "overrides.yaml")
        if first:
            configure_log(config.hydra.job_logging, config.hydra.verbose)
        else:
            handlers.append(log_beside(run_dir / f"{config.hydra.job.name}.log"))
        return PackedJob(task_cfg, run_dir, str(config.hydra.sweep.dir),
                         config.hydra.job.override_dirname or None,
                         label=" ".join(own) or f"job {config.hydra.job.num}")

    def resume_command(self) -> str:
        """The sweep's command again, resuming every run from its own checkpoint."""
        hydra = self.config.hydra
        task = [o for o in hydra.overrides.task if not o.startswith("trainer.resume=")]
        chosen = [o for o in hydra.overrides.hydra
                  if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
        return shlex.join(["kdrun", "-m", *task, *chosen, "trainer.resume=true",
                           f"hydra.sweep.dir={hydra.sweep.dir}"])


def own_overrides(configs: list[DictConfig]) -> list[list[str]]:
    """Each job's command-line overrides that the others in `configs` do not share: the
    member's name in a pack's log lines."""
    common = set.intersection(*(set(c.hydra.overrides.task) for c in configs))
    return [[o for o in c.hydra.overrides.task if o not in common] for c in configs]


def task_config(config: DictConfig) -> DictConfig:
    """The job's own config, without the hydra node (what a task function is given)."""
    task = config.copy()
    with read_write(task), open_dict(task):
        task.pop("hydra", None)
    return task


def reported(outcome: Any):
    """A member's outcome as the work report_job does: its results, or its error raised (a
    KeyboardInterrupt included)."""
    def work():
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    return work


def log_beside(path: Path) -> logging.Handler:
    """A file handler like the root logger's first one, writing `path`: a pack's log lands in
    every member's run directory."""
    root = logging.getLogger()
    model = next((h for h in root.handlers if isinstance(h, logging.FileHandler)), None)
    handler = logging.FileHandler(path)
    if model is not None:
        handler.setFormatter(model.formatter)
        handler.setLevel(model.level)
    root.addHandler(handler)
    return handler
