"""The lines a run prints when it ends: what ran (method, architectures, the settings that
define it), and its figures with their units, each round and peer on its own line; each
evaluation's lines come from the evaluation that owns their keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kdrun.config import choice
from kdrun.evaluation import summary_lines as evaluation_lines
from kdrun.weights import ACCURACY_TOLERANCE, far_from_reported

# The settings a summary's first line names, when the method has them.
HEADLINE_SETTINGS = ("alpha", "T", "sigma", "label_noise", "rounds")


def summary(cfg: DictConfig, results: dict[str, Any], run_dir: Path) -> str:
    if choice(cfg.mode) == "eval":
        lines = [f"evaluated {cfg.checkpoint} on {cfg.dataset.name}"]
    else:
        headline = [f"{key} {results[f'method/{key}']}" for key in HEADLINE_SETTINGS
                    if f"method/{key}" in results]
        lines = [f"{cfg.method.name}: {results['meta/student_arch']} on {cfg.dataset.name}, "
                 f"{cfg.epochs} epochs" + "".join(f", {h}" for h in headline)]
    if "teacher/test/acc" in results:
        sha = results.get("meta/teacher_sha256")
        lines.append(f"  teacher ({results.get('meta/teacher_arch', cfg.teacher.arch)}) test acc  "
                     f"{results['teacher/test/acc']:6.2f} %"
                     + (f"  (file SHA-256 {sha[:16]}…)" if sha else ""))
        lines += against_reported(results["teacher/test/acc"],
                                  results.get("meta/teacher_reported_acc"), cfg)
    best = f"  (best epoch {results['test/best_acc']:.2f} %)" if "test/best_acc" in results else ""
    who = "model" if choice(cfg.mode) == "eval" else f"student ({results['meta/student_arch']})"
    lines.append(f"  {who} test acc  {results['test/acc']:6.2f} %{best}")
    lines += against_reported(results["test/acc"], results.get("meta/model_reported_acc"), cfg)
    if "test/acc_at_best_val" in results:
        lines.append(f"  at the best validation epoch ({results['val/best_epoch']}): val acc "
                     f"{results['val/best_acc']:.2f} %, test acc "
                     f"{results['test/acc_at_best_val']:.2f} %")
    archs = peer_architectures(cfg)
    for key in sorted(k for k in results if k.startswith("peer") and k.endswith("/test/acc")):
        name = key.removesuffix("/test/acc")
        arch = f" ({archs[name]})" if name in archs else ""
        lines.append(f"  {name}{arch} test acc  {results[key]:6.2f} %")
    for key in sorted((k for k in results if re.fullmatch(r"round\d+/test/acc", k)),
                      key=lambda k: int(k[5:].split("/")[0])):
        stage = key.split("/")[0]
        pseudo = results.get(f"{stage}/pseudo_labelled")
        lines.append(f"  {stage} test acc  {results[key]:6.2f} %"
                     + (f"  ({pseudo} pseudo-labelled images)" if pseudo is not None else ""))
    if "test/agreement" in results:
        lines.append(f"  student-teacher agreement  {results['test/agreement']:6.2f} %")
    lines += evaluation_lines(results)
    lines.append(f"  calibration error (ECE)  {results['calib/ece']:.2f} %")
    graph = " (as a CUDA graph)"
    if "synth/img_s" in results:
        lines.append(f"  synthesis  {results['synth/images']} images, "
                     f"{results['synth/img_s']:.1f} img/s"
                     f"{graph if results.get('synth/captured') else ''}; teacher acc on them "
                     f"{results['synth/teacher_acc']:.2f} %")
    if "train/img_s" in results:
        lines.append(f"  training speed  {results['train/img_s']:.0f} img/s"
                     f"{graph if results.get('train/captured') else ''}")
    lines.append(f"  run directory  {run_dir}")
    return "\n".join(lines)


def against_reported(measured: float, reported: float | None, cfg: DictConfig) -> list[str]:
    """A published model's measured accuracy beside the one its source reports, warned about
    beyond ACCURACY_TOLERANCE when measured on the whole test split."""
    if reported is None:
        return []
    gap = measured - reported
    line = f"    its source reports {reported:.2f} % ({gap:+.2f} points)"
    if cfg.dataset.test_subset is not None:
        return [line + " on the whole test split; this run tested a subset"]
    if far_from_reported(measured, reported):
        return [line, f"    warning: more than {ACCURACY_TOLERANCE} points apart: not the "
                "model its source measured (file, conversion or input normalisation)"]
    return [line]


def peer_architectures(cfg: DictConfig) -> dict[str, str]:
    """peer<k> -> its architecture, for online methods (network 0 is student=)."""
    peers = cfg.method.get("peers")
    if not peers:
        return {}
    networks = [cfg.student.arch, *peers]
    return {f"peer{k}": arch for k, arch in enumerate(networks)}
