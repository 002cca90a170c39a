"""A job's outcome, reported the one way whichever launcher ran it (cli.py for a lone job or
Hydra's launchers, launchers/packed.py for a pack's members): its summary and the objective its
sweeper gets, or its error in the log and in error.txt, and the exit status."""

from __future__ import annotations

import logging
import shlex
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.types import RunMode
from omegaconf import DictConfig

from kdrun.errors import Interrupted, KdrunError, RunDirectoryTaken
from kdrun.runtime import distributed
from kdrun.summary import summary
from kdrun.sweep import objective_key

log = logging.getLogger("kdrun")


def report_job(cfg: DictConfig, hydra_cfg, run_dir: Path, work: Callable[[], dict[str, Any]],
               resume: str | None = None) -> float | None:
    """A job's `work` done, and its outcome reported: the summary and its objective (returned
    to the sweeper), or its error - one line in the log and in error.txt (a traceback for a
    bug), the sweep going on without it, or the whole command stopping on Ctrl-C with the
    command that resumes it (`resume`, else the run's own)."""
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        results = work()
        if not distributed.is_main():  # rank 0 reports for the run
            return None
        log.info("done\n%s", summary(cfg, results, run_dir))
        return objective(cfg, results)
    except (Interrupted, KeyboardInterrupt) as err:  # the whole sweep stops too
        where = str(err) if isinstance(err, Interrupted) else "interrupted"
        log.error("%s; resume with: %s", where, resume or resume_command(hydra_cfg, run_dir))
        record_error(run_dir, f"{where}\n")
        sys.exit(130)
    except KdrunError as err:
        log.error("%s", err)
        if not isinstance(err, RunDirectoryTaken):  # that directory is another run's
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
    key = objective_key(cfg)
    if key not in results:
        known = ", ".join(sorted(k for k in results if not k.startswith("meta/"))[:8])
        raise KdrunError(f"objective={key} is not a key of this run's results: "
                         f"choose one of {known}, ...")
    return float(results[key])


def resume_command(hydra_cfg, run_dir: Path) -> str:
    """The command that continues an interrupted run in its own directory."""
    kept = [o for o in hydra_cfg.overrides.task
            if not o.startswith(("trainer.resume=", "hydra.run.dir="))]
    return shlex.join(["kdrun", *kept, "trainer.resume=true", f"hydra.run.dir={run_dir}"])


def record_error(run_dir: Path, text: str) -> None:
    """error.txt in the run directory (error-rank<N>.txt for the other ranks of a torchrun)."""
    rank = distributed.rank()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ("error.txt" if rank == 0 else f"error-rank{rank}.txt")).write_text(text)
