"""Data-free distillation: synthesise a pool of images from the teacher, then distil on it."""

from __future__ import annotations

import math
import time
import zlib

import torch

from kdrun.data import ImageData, TensorSplit
from kdrun.data.pool import load_pool, save_pool
from kdrun.engine import distributed
from kdrun.engine.runtime import synchronize
from kdrun.errors import require
from kdrun.methods.base import METHODS, Stage, StageContext
from kdrun.methods.inversion import SynthesisSettings, Synthesizer, balanced_labels
from kdrun.methods.kd import KD

POOL_FILE = "pool.pt"


@METHODS.register("deepinversion")
class DeepInversion(KD):
    """DeepInversion (Yin et al., "Dreaming to Distill", CVPR 2020, arXiv 1912.08795): a pool of
    `pool_size` images is synthesised from the teacher alone (cross-entropy to balanced target
    labels + bn_weight * BatchNorm-statistics distance + total-variation and l2 priors, with
    random jitter and flips), then the student learns by KD on that pool; the real test set
    only evaluates. The pool is kept in <run dir>/synthetic/ for reuse (dataset=synthetic_pool)."""

    competition_weight = 0.0  # Adaptive DeepInversion's, off here

    def __init__(self, student, teacher, alpha: float, T: float, pool_size: int,
                 batch_size: int, iterations: int, lr: float, bn_weight: float,
                 first_bn_weight: float, tv_weight: float, l2_weight: float, jitter: int,
                 flip: bool, multi_resolution: bool):
        super().__init__(student, teacher, alpha, T)
        self.pool_size = pool_size
        self.batch_size = batch_size
        self.settings = SynthesisSettings(
            iterations=iterations, lr=lr, bn_weight=bn_weight, first_bn_weight=first_bn_weight,
            tv_weight=tv_weight, l2_weight=l2_weight, jitter=jitter, flip=flip,
            multi_resolution=multi_resolution, competition_weight=self.competition_weight)

    @classmethod
    def check_settings(cls, settings) -> None:
        for key in ("pool_size", "batch_size"):
            require(settings[key] >= 1, f"method.{key}", settings[key], "use >= 1")
        require(settings.iterations >= 0, "method.iterations", settings.iterations,
                "use >= 0 (0: the pool is the starting noise, a baseline)")
        require(settings.lr > 0, "method.lr", settings.lr, "the learning rate must be > 0")
        for key in ("tv_weight", "l2_weight", "jitter"):
            require(settings[key] >= 0, f"method.{key}", settings[key], "use >= 0")

    def stages(self, data: ImageData, epochs: int, context: StageContext):
        pool = self.synthesize(data.classes, self.pool_size, POOL_FILE, context, student=None)
        context.results["synth/teacher_acc"] = self.teacher_accuracy(pool, context)
        yield Stage("distill", ImageData(pool, data.test, data.classes), epochs)

    def synthesize(self, classes: list[str], size: int, name: str, context: StageContext,
                   student) -> TensorSplit:
        """`size` images with balanced labels, saved as <run dir>/synthetic/<name> (read back
        instead when a resumed run finds it there)."""
        path = context.run_dir / "synthetic" / name
        saved = distributed.from_main(lambda: load_pool(path)[0] if path.is_file() else None)
        if saved is not None:
            return saved
        return self._synthesize(classes, size, path, context, student)

    def _synthesize(self, classes, size, path, context: StageContext, student) -> TensorSplit:
        """Batch b starts from its own seeded noise (seeded by the run's seed and the pool's
        name, so each pool of a run starts elsewhere), so under torch.distributed each rank
        synthesises a contiguous share of the batches and the pool is the same for any
        number of ranks."""
        seed = context.seed * 1_000_003 + zlib.crc32(path.name.encode())
        labels = balanced_labels(size, len(classes), torch.Generator().manual_seed(seed))
        synthesizer = Synthesizer(self.teacher, self.settings, context.autocast, context.log,
                                  context.memory_format)
        starts = range(0, size, self.batch_size)
        size_px = context.image_size
        images = [torch.zeros(0, 3, size_px, size_px, dtype=torch.uint8)]
        start = time.perf_counter()
        for b in distributed.shard_indices(len(starts)).tolist():
            generator = torch.Generator().manual_seed(seed + 1 + b)
            batch_labels = labels[starts[b]:starts[b] + self.batch_size].to(context.device)
            images.append(synthesizer.batch(batch_labels, size_px, generator, student).cpu())
        synchronize(context.device)
        elapsed = time.perf_counter() - start
        pool = TensorSplit(distributed.gather(torch.cat(images)), labels)
        grid = save_pool(path, pool, classes, meta={
            "method": type(self).__name__, "teacher": self.teacher.arch,
            "iterations": self.settings.iterations, "seconds": elapsed})
        context.images({"synth/samples": grid})
        results = context.results  # totals over every synthesis of the run
        results["synth/images"] = results.get("synth/images", 0) + size
        results["synth/seconds"] = results.get("synth/seconds", 0.0) + elapsed
        results["synth/img_s"] = results["synth/images"] / max(results["synth/seconds"], 1e-9)
        return pool

    @torch.inference_mode()
    def teacher_accuracy(self, pool: TensorSplit, context: StageContext) -> float:
        """Percent of the pool the teacher classifies as the label it was synthesised for."""
        self.teacher.eval()
        correct = torch.zeros((), device=context.device)
        for i in range(0, len(pool), self.batch_size):
            images = pool.images[i:i + self.batch_size].to(context.device).float() / 255
            with context.autocast():
                predicted = self.teacher(images).argmax(dim=1)
            correct += (predicted == pool.labels[i:i + self.batch_size].to(context.device)).sum()
        return 100 * correct.item() / len(pool)


@METHODS.register("adaptive_deepinversion")
class AdaptiveDeepInversion(DeepInversion):
    """Adaptive DeepInversion (same paper): the synthesis loss adds competition_weight *
    (1 - JS(p_teacher, p_student)) at temperature competition_T, favouring images the current
    student gets wrong. The student is in the loop, so stages alternate: each of `rounds`
    rounds synthesises pool_size/rounds images with the current student, then distils on the
    pool so far for epochs/rounds epochs."""

    def __init__(self, student, teacher, alpha: float, T: float, pool_size: int,
                 batch_size: int, iterations: int, lr: float, bn_weight: float,
                 first_bn_weight: float, tv_weight: float, l2_weight: float, jitter: int,
                 flip: bool, multi_resolution: bool, competition_weight: float,
                 competition_T: float, rounds: int):
        self.competition_weight = competition_weight
        super().__init__(student, teacher, alpha, T, pool_size, batch_size, iterations, lr,
                         bn_weight, first_bn_weight, tv_weight, l2_weight, jitter, flip,
                         multi_resolution)
        self.settings.competition_T = competition_T
        self.rounds = rounds

    @classmethod
    def check_settings(cls, settings) -> None:
        super().check_settings(settings)
        require(settings.rounds >= 1, "method.rounds", settings.rounds, "use >= 1")
        require(settings.competition_T > 0, "method.competition_T", settings.competition_T,
                "the temperature must be > 0")

    def stages(self, data: ImageData, epochs: int, context: StageContext):
        per_round = math.ceil(self.pool_size / self.rounds)
        pool: TensorSplit | None = None
        for r in range(1, self.rounds + 1):
            new = self.synthesize(data.classes, per_round, f"pool-round{r}.pt", context,
                                  student=self.student)
            pool = new if pool is None else TensorSplit(torch.cat([pool.images, new.images]),
                                                        torch.cat([pool.labels, new.labels]))
            context.results["synth/teacher_acc"] = self.teacher_accuracy(pool, context)
            if r == self.rounds:  # the whole pool, for reuse like DeepInversion's
                save_pool(context.run_dir / "synthetic" / POOL_FILE, pool, data.classes,
                          meta={"method": type(self).__name__, "teacher": self.teacher.arch})
            yield Stage(f"round{r}", ImageData(pool, data.test, data.classes),
                        max(1, epochs // self.rounds))


@METHODS.register("deepdream")
class DeepDream(DeepInversion):
    """The DeepDream baseline of the same paper: DeepInversion without the BatchNorm-statistics
    term (only the target class and the image priors shape the pool)."""

    def __init__(self, student, teacher, alpha: float, T: float, pool_size: int,
                 batch_size: int, iterations: int, lr: float, tv_weight: float,
                 l2_weight: float, jitter: int, flip: bool, multi_resolution: bool):
        super().__init__(student, teacher, alpha, T, pool_size, batch_size, iterations, lr,
                         bn_weight=0.0, first_bn_weight=0.0, tv_weight=tv_weight,
                         l2_weight=l2_weight, jitter=jitter, flip=flip,
                         multi_resolution=multi_resolution)
