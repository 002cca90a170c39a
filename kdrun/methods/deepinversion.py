"""Data-free distillation: synthesise a pool of images from the teacher, then distil on it."""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from kdrun.data import ImageData, TensorSplit
from kdrun.data.pool import load_pool, save_pool
from kdrun.data.types import unit_pixels
from kdrun.methods.base import Networks, Stage
from kdrun.methods.inversion import (
    Competition,
    SynthesisSettings,
    Synthesizer,
    as_pool_dtype,
    balanced_labels,
)
from kdrun.methods.kd import KD, KDSettings
from kdrun.runtime import distributed
from kdrun.runtime.device import synchronize
from kdrun.runtime.run import Run

POOL_FILE = "pool.pt"
UNCONVERGED_BELOW = 50.0  # synth/teacher_acc (%) under which kdrun warns
log = logging.getLogger(__name__)


@dataclass
class DeepInversionSettings(SynthesisSettings, KDSettings):
    pass


class DeepInversion(KD):
    """DeepInversion (Yin et al., "Dreaming to Distill", CVPR 2020, arXiv 1912.08795): a pool of
    `pool_size` images is synthesised from the teacher alone (cross-entropy to balanced target
    labels + bn_weight * BatchNorm-statistics distance + total-variation and l2 priors, with
    random jitter and flips), then the student learns by KD on that pool; the real test set
    only evaluates. The pool is kept in <run dir>/synthetic/ for reuse (dataset=synthetic_pool)."""

    Settings = DeepInversionSettings

    def __init__(self, settings: DeepInversionSettings, networks: Networks):
        super().__init__(settings, networks)
        self.synthesised: dict[str, Any] = {"synth/images": 0, "synth/seconds": 0.0,
                                             "synth/captured": False}
        self.batches_logged = 0  # synthesis batches whose loss terms are logged (their step)

    def competition(self) -> Competition | None:
        """Adaptive DeepInversion's extra synthesis term; none here."""
        return None

    def stages(self, data: ImageData, epochs: int, run: Run):
        pool = self.synthesize(data.classes, self.settings.pool_size, POOL_FILE, run,
                               student=None)
        yield Stage("distill", replace(data, train=pool), epochs,
                    metrics=self.synthesis_metrics(pool, run))

    def synthesis_metrics(self, pool: TensorSplit, run: Run) -> dict[str, Any]:
        """Totals over every synthesis of the run so far, and the teacher's accuracy on `pool`
        (a warning when it is low: the images do not yet look like their classes to it)."""
        totals = self.synthesised
        accuracy = self.teacher_accuracy(pool, run)
        if accuracy < UNCONVERGED_BELOW:
            log.warning("synthesis: the teacher recognises only %.1f %% of the pool as the class "
                        "each image was made for; the synthesis has not converged (raise "
                        "synthesis.iterations; the paper's CIFAR-10 setting is 2000)", accuracy)
        return {**totals, "synth/img_s": totals["synth/images"] / max(totals["synth/seconds"],
                                                                      1e-9),
                "synth/teacher_acc": accuracy}

    def synthesize(self, classes: list[str], size: int, name: str, run: Run,
                   student) -> TensorSplit:
        """`size` images with balanced labels, saved as <run dir>/synthetic/<name> (read back
        instead when a resumed run finds it there)."""
        path = run.dir / "synthetic" / name
        saved = distributed.from_main(lambda: load_pool(path)[0] if path.is_file() else None)
        if saved is not None:  # in this run's dtype (a file saved before the setting changed)
            return replace(saved, images=as_pool_dtype(saved.images, self.settings.pool_dtype))
        return self._synthesize(classes, size, path, run, student)

    def _synthesize(self, classes: list[str], size: int, path: Path, run: Run,
                    student) -> TensorSplit:
        """Batch b starts from its own seeded noise (seeded by the run's seed and the pool's
        name, so each pool of a run starts elsewhere), so under torch.distributed each rank
        synthesises a contiguous share of the batches and the pool is the same for any
        number of ranks."""
        batch_size = self.settings.batch_size
        seed = run.seed * 1_000_003 + zlib.crc32(path.name.encode())
        labels = balanced_labels(size, len(classes), torch.Generator().manual_seed(seed))
        synthesizer = Synthesizer(self.teacher, self.settings, run, self.competition(),
                                  logged_batches=self.batches_logged)
        starts = range(0, size, batch_size)
        size_px = run.cfg.dataset.image_size
        images = [torch.zeros(0, 3, size_px, size_px,
                              dtype=getattr(torch, self.settings.pool_dtype))]
        start = time.perf_counter()
        mine = distributed.shard_indices(len(starts)).tolist()
        log.info("synthesis: %d images in %d batches of %d, %d iterations each", size,
                 len(starts), batch_size, self.settings.iterations)
        for done, b in enumerate(mine, start=1):
            generator = torch.Generator().manual_seed(seed + 1 + b)
            batch_labels = labels[starts[b]:starts[b] + batch_size].to(run.device)
            images.append(synthesizer.batch(batch_labels, size_px, generator, student).cpu())
            elapsed = time.perf_counter() - start
            log.info("synthesis: batch %d/%d done, %.0f s so far, about %.0f s to go", done,
                     len(mine), elapsed, elapsed / done * (len(mine) - done))
        synchronize(run.device)
        elapsed = time.perf_counter() - start
        pool = TensorSplit(distributed.gather(torch.cat(images)), labels)
        grid = save_pool(path, pool, classes, meta={
            "method": type(self).__name__, "teacher": self.teacher.arch,
            "iterations": self.settings.iterations, "seconds": elapsed})
        run.sink.images({"synth/samples": grid})
        self.batches_logged = synthesizer.optimised  # the next pool's rows go on from here
        self.synthesised["synth/images"] += size
        self.synthesised["synth/seconds"] += elapsed
        self.synthesised["synth/captured"] |= synthesizer.captured
        return pool

    @torch.inference_mode()
    def teacher_accuracy(self, pool: TensorSplit, run: Run) -> float:
        """Percent of the pool the teacher classifies as the label it was synthesised for."""
        self.teacher.eval()
        batch_size = self.settings.batch_size
        correct = torch.zeros((), device=run.device)
        for i in range(0, len(pool), batch_size):
            images = unit_pixels(pool.images[i:i + batch_size].to(run.device))
            with run.autocast():
                predicted = self.teacher(images).argmax(dim=1)
            correct += (predicted == pool.labels[i:i + batch_size].to(run.device)).sum()
        return 100 * correct.item() / len(pool)
