"""`kdrun`: the command line - Hydra's config and flags, kdrun's own (--dry-run, the help it
adds), one-line refusals of what cannot run - and each job's errors, exit status and summary.
What a job does is jobs.py, imported only when one runs."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.types import RunMode
from hydra_plugins.kdrun_launchers.packed import PackedLauncher, dry_run_plan
from omegaconf import DictConfig

from kdrun.config import choice
from kdrun.errors import KdrunError
from kdrun.options import register_configs
from kdrun.outcome import report_job
from kdrun.runtime import checkpoint, distributed
from kdrun.sweep import SweepSummary, sweep_jobs
from kdrun.usage import extra_help
from kdrun.weights.registry import PREFIX, is_zoo, weight_files

log = logging.getLogger("kdrun")
register_configs()
# kdrun's own launchers, found by Hydra's plugin scan once installed; registered here too, for
# an editable install, whose mapped hydra_plugins folder the scan cannot list
Plugins.instance().register(PackedLauncher)


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
HELP_FLAGS = ("--help", "-h")
SHOW_FLAGS = ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")  # Hydra's: one job
# Under torchrun, ranks other than 0 leave the run directory, its .hydra/ and its log to rank 0.
QUIET_RANK_OVERRIDES = ["hydra.run.dir=.", "hydra.output_subdir=null",
                        "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


OUTPUT_KEYS = {"hydra.run.dir": "outputs", "hydra.sweep.dir": "outputs"}  # and their default


def unusable_output_dir(args: list[str]) -> str | None:
    """Why the run (or sweep) directory the command line asks for cannot be written, or None.
    Checked before Hydra creates it, which would fail with a traceback."""
    given = dict(arg.split("=", 1) for arg in args if arg.split("=", 1)[0] in OUTPUT_KEYS)
    for key in OUTPUT_KEYS:
        value = given.get(key, OUTPUT_KEYS[key])
        path = Path(value.split("${", 1)[0] or ".").expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            return (f"{key}={value} lies under {existing}, which is a file: choose a directory "
                    f"elsewhere, e.g. {key}=outputs/NAME")
        if not os.access(existing, os.W_OK | os.X_OK):
            return (f"{key}={value} cannot be written ({existing} is not writable by you): "
                    f"choose a directory you can write, e.g. {key}=~/kdrun-runs/NAME")
    return None


def with_checkpoint_dataset(args: list[str]) -> list[str]:
    """`mode=eval` without `dataset=` (or a preset): the data set the checkpoint was trained
    on, which kdrun records in every model file (and the registry for a published one,
    zoo:NAME), instead of the default CIFAR-10."""
    given = dict(arg.split("=", 1) for arg in args if "=" in arg and not arg.startswith("-"))
    if given.get("mode") != "eval" or "dataset" in given or "experiment" in given:
        return args
    if is_zoo(given.get("checkpoint")):
        files = weight_files()
        name = given["checkpoint"][len(PREFIX):]
        return [*args, f"dataset={files[name].dataset}"] if name in files else args
    path = Path(given.get("checkpoint", "")).expanduser()
    try:
        stored = checkpoint.load(path) if path.is_file() else {}
    except KdrunError:  # the run itself says what is wrong with the file
        return args
    name = stored.get("meta", {}).get("dataset") if isinstance(stored, dict) else None
    return [*args, f"dataset={name}"] if name else args


def dry_run(args: list[str]) -> tuple[str, int]:
    """`kdrun [-m] ... --dry-run`: the jobs the command would run, and how many, without
    running any; and the exit status."""
    overrides = [a for a in args if a not in ("--dry-run", *MULTIRUN_FLAGS)]
    try:
        jobs = sweep_jobs(overrides)
        packs = [] if isinstance(jobs, str) else dry_run_plan(jobs, overrides)
    except Exception as err:  # Hydra's override and config errors: their first line says it
        return f"kdrun: {str(err).strip().splitlines()[0]}", 1
    if isinstance(jobs, str):
        return f"kdrun --dry-run: {jobs}", 0
    listed = "\n".join(f"  {i}: {shlex.join(job)}" for i, job in enumerate(jobs))
    if len(jobs) > 1 and not any(a in MULTIRUN_FLAGS for a in args):
        return f"kdrun --dry-run: {len(jobs)} jobs, which only a sweep runs: add -m\n{listed}", 1
    shown = "".join(f"\n{line}" for line in packs)
    return f"kdrun --dry-run: {len(jobs)} job{'s' * (len(jobs) != 1)}\n{listed}{shown}", 0


def main() -> None:
    if "--dry-run" in sys.argv[1:]:
        text, status = dry_run(expand_home(sys.argv[1:]))
        print(text)
        sys.exit(status)
    shown = [a for a in sys.argv[1:] if a.split("=")[0] in SHOW_FLAGS]
    if shown and any(a in MULTIRUN_FLAGS for a in sys.argv[1:]):
        sys.exit(f"kdrun: {shown[0]} shows one job, not a sweep: list the sweep's jobs with "
                 f"--dry-run, or drop -m and give each key one value to see that job")
    sys.argv = expand_home(sys.argv)
    sys.argv = [sys.argv[0], *with_checkpoint_dataset(sys.argv[1:])]
    problem = unusable_output_dir(sys.argv[1:])
    if problem:
        sys.exit(f"kdrun: {problem}")
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
    except SystemExit as done:
        if done.code in (0, None) and any(a in HELP_FLAGS for a in sys.argv[1:]):
            print(extra_help(sys.argv[1:]))
        raise
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
    from kdrun.jobs import evaluate_checkpoint, train  # the heavy imports: only for a job

    run = evaluate_checkpoint if choice(cfg.mode) == "eval" else train
    return report_job(cfg, hydra_cfg, run_dir, lambda: run(
        cfg, run_dir, sweep_group=hydra_cfg.sweep.dir if multirun else None,
        run_name=hydra_cfg.job.override_dirname or None))


if __name__ == "__main__":
    main()
