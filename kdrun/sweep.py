"""The record a sweep leaves when its last job ends, whichever launcher ran the jobs (local,
joblib, submitit) and whichever sweeper chose them (grid, Optuna): every job's status, its
overrides and its objective, in `<sweep dir>/summary.json` and in the log."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdrun.options import register_configs
from kdrun.report import find_runs

log = logging.getLogger("kdrun")


def objective_key(config) -> str:
    """The results key a run returns to its sweeper: `objective` when set, else val/acc when
    the run holds out a validation split, else test/acc. `config`: a run's config, loaded or
    composed."""
    if config.get("objective"):
        return config["objective"]
    return "val/acc" if (config.get("dataset") or {}).get("val_size") else "test/acc"


def sweep_jobs(overrides: list[str]) -> list[list[str]] | str:
    """The jobs a grid sweep (`kdrun -m ...`) would run, each as its overrides, in Hydra's
    order: the preset's hydra.sweeper.params first, the command line's overrides after (and
    winning on a shared key). For another sweeper (Optuna), the reason it cannot be listed."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    fixed = [text for text, o in zip(overrides, parsed) if not o.is_sweep_override()]
    register_configs()
    with initialize_config_module("kdrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=fixed, return_hydra_config=True)
    sweeper = str(cfg.hydra.sweeper.get("_target_", ""))
    if not sweeper.endswith("BasicSweeper"):
        return (f"the sweeper {sweeper.rsplit('.', 1)[-1]} chooses its jobs as it runs "
                f"(hydra.sweeper.n_trials sets how many)")
    given = {o.get_key_element() for o in parsed}
    preset = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.get("params") or {}).items()
              if key not in given]
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
            if o.is_sweep_override() else [text]
            for text, o in zip(preset + overrides, parser.parse_overrides(preset + overrides))]
    return [list(job) for job in itertools.product(*axes)]


class SweepSummary(Callback):
    failed_jobs = 0  # read by kdrun's main(): a sweep with failed jobs exits with status 1

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        key = objective_key(config)
        if key.startswith("test/") and "optuna" in str(config.hydra.sweeper.get("_target_")):
            log.warning("the sweeper tunes on %s, the test set: its best figures are "
                        "optimistic. Hold out a validation split (dataset.val_size=5000) and "
                        "tune on val/acc (the default objective with one)", key)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = summarise_sweep(sweep_dir)
        (sweep_dir / "summary.json").write_text(json.dumps(jobs, indent=2) + "\n")
        failed = [job for job in jobs if job["status"] != "ok"]
        SweepSummary.failed_jobs = len(failed)
        log.info("sweep %s: %d jobs, %d ok, %d failed or unfinished (summary.json)", sweep_dir,
                 len(jobs), len(jobs) - len(failed), len(failed))
        for job in failed:
            log.error("  %s %s: %s", job["status"], job["dir"], job["error"] or "no results.json")


def summarise_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    jobs = []
    for run in find_runs(sweep_dir):
        key = objective_key(run.config)
        value = (run.results or {}).get(key)
        jobs.append({"dir": str(run.path.relative_to(sweep_dir)), "status": run.status,
                     "overrides": run.settings, "objective": key, "value": value,
                     "error": run.error.splitlines()[-1] if run.error else None})
    return jobs
