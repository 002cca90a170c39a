"""The lines a run prints when it ends: what ran (method, architectures, the settings that
define it), and its figures with their units, each round and peer on its own line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kdrun.config import choice

# The settings a summary's first line names, when the method has them.
HEADLINE_SETTINGS = ("alpha", "T", "sigma", "label_noise", "rounds")
OOD_SCORE_NAMES = {"msp": "MSP", "maxlogit": "max-logit", "energy": "energy"}


def summary(cfg: DictConfig, results: dict[str, Any], run_dir: Path) -> str:
    if choice(cfg.mode) == "eval":
        lines = [f"evaluated {cfg.checkpoint} on {cfg.dataset.name}"]
    else:
        headline = [f"{key} {results[f'method/{key}']}" for key in HEADLINE_SETTINGS
                    if f"method/{key}" in results]
        lines = [f"{cfg.method.name}: {results['meta/student_arch']} on {cfg.dataset.name}, "
                 f"{cfg.epochs} epochs" + "".join(f", {h}" for h in headline)]
    if "teacher/test/acc" in results:
        lines.append(f"  teacher ({results.get('meta/teacher_arch', cfg.teacher.arch)}) test acc  "
                     f"{results['teacher/test/acc']:6.2f} %")
    best = f"  (best epoch {results['test/best_acc']:.2f} %)" if "test/best_acc" in results else ""
    who = "model" if choice(cfg.mode) == "eval" else f"student ({results['meta/student_arch']})"
    lines.append(f"  {who} test acc  {results['test/acc']:6.2f} %{best}")
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
    robust = sorted((k for k in results if k.startswith(("pgd/", "fgsm/"))), key=attack_order)
    if robust:
        lines.append("  robust acc  " + ", ".join(
            f"{attack_label(k)} {results[k]:.1f} %" for k in robust))
    if "corrupt/mean_acc" in results:
        lines.append(f"  mean corruption acc  {results['corrupt/mean_acc']:.2f} %")
    lines += shift_and_ood_lines(results)
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


def peer_architectures(cfg: DictConfig) -> dict[str, str]:
    """peer<k> -> its architecture, for online methods (network 0 is student=)."""
    peers = cfg.method.get("peers")
    if not peers:
        return {}
    networks = [cfg.student.arch, *peers]
    return {f"peer{k}": arch for k, arch in enumerate(networks)}


def attack_label(key: str) -> str:
    """'pgd/linf/eps8/acc' -> 'PGD L-inf 8/255'; 'pgd/l2/eps0.5/acc' -> 'PGD L2 0.5';
    'fgsm/eps2/acc' -> 'FGSM 2/255' (L-inf budgets are in 1/255 units, L2 radii in pixels)."""
    parts = key.removesuffix("/acc").split("/")
    eps = parts[-1].removeprefix("eps")
    if parts[0] == "fgsm":
        return f"FGSM {eps}/255"
    return f"PGD L-inf {eps}/255" if parts[1] == "linf" else f"PGD L2 {eps}"


def attack_order(key: str) -> tuple[str, float]:
    parts = key.removesuffix("/acc").split("/")
    return "/".join(parts[:-1]), float(parts[-1].removeprefix("eps"))


def shift_and_ood_lines(results: dict[str, Any]) -> list[str]:
    """One line per shift set (accuracy) and per far-OOD set (AUROC / FPR95 of each score),
    with a note where a score ranks the OOD set above the test set (AUROC < 50 %)."""
    lines = []
    sets = sorted({k.split("/")[1] for k in results if k.startswith("ood/")})
    for name in sets:
        if f"ood/{name}/acc" in results:
            lines.append(f"  shift {name}  acc {results[f'ood/{name}/acc']:.2f} %")
        scores = [s for s in OOD_SCORE_NAMES if f"ood/{name}/{s}/auroc" in results]
        if not scores:
            continue
        lines.append(f"  OOD {name}  AUROC / FPR95: " + ", ".join(
            f"{OOD_SCORE_NAMES[s]} {results[f'ood/{name}/{s}/auroc']:.1f} / "
            f"{results[f'ood/{name}/{s}/fpr95']:.1f} %" for s in scores))
        below = [OOD_SCORE_NAMES[s] for s in scores if results[f"ood/{name}/{s}/auroc"] < 50]
        if below:
            lines.append(f"    note: {', '.join(below)} below 50 %: the model scores {name} as "
                         f"more in-distribution than its own test set")
    return lines
