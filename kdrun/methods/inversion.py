"""Image synthesis from a trained classifier (Yin et al., "Dreaming to Distill", arXiv
1912.08795): a batch of images, started from N(0, 1) in the network's normalised input space, is
optimised with Adam towards target labels while its statistics at every BatchNorm layer are
pulled to the layer's running statistics. The parts of the loss are separate functions so each
can be tested; `Synthesizer` runs the loop. With CUDA graphs on (`trainer.cuda_graph`, the
default with CUDA) an iteration - jitter, forward, backward, Adam - is captured once and
replayed for every iteration of every batch of the pool, as the training step is
(runtime/graphs.py): the jitter is drawn on the host ahead of the loop and applied on the
device, so eager and captured iterations take the same draws."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from kdrun.checks import require
from kdrun.data.types import unit_pixels
from kdrun.methods.base import MethodSettings
from kdrun.models import Classifier
from kdrun.runtime.graphs import Replay
from kdrun.runtime.run import Run


class BatchNormStatistics:
    """Forward hooks on every BatchNorm2d of a network: R_feature, the distance between the
    mean and variance of each layer's input batch and the layer's running ones,
    sum_l w_l (||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2), with the first
    layer's weight `first_weight` and every other 1. Computed on the device, no host sync."""

    def __init__(self, network: nn.Module, first_weight: float = 1.0):
        self.terms: list[torch.Tensor] = []
        layers = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
        self.weights = [first_weight] + [1.0] * (len(layers) - 1)
        self.handles = [layer.register_forward_hook(self._hook) for layer in layers]

    def _hook(self, layer: nn.BatchNorm2d, inputs: tuple[torch.Tensor], _output) -> None:
        x = inputs[0].float()
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        self.terms.append(torch.linalg.vector_norm(mean - layer.running_mean)
                          + torch.linalg.vector_norm(var - layer.running_var))

    def loss(self) -> torch.Tensor:
        """R_feature of the last forward pass (and forget it)."""
        value = sum(w * t for w, t in zip(self.weights, self.terms))
        self.terms = []
        return value

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """L2 norms of the differences between neighbouring pixels, horizontally, vertically and
    along both diagonals, summed (the reference implementation's 'var_l2' prior)."""
    diffs = (x[:, :, :, :-1] - x[:, :, :, 1:], x[:, :, :-1, :] - x[:, :, 1:, :],
             x[:, :, 1:, :-1] - x[:, :, :-1, 1:], x[:, :, :-1, :-1] - x[:, :, 1:, 1:])
    return sum(torch.linalg.vector_norm(d) for d in diffs)


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """Each image's (unsquared) L2 norm, averaged over the batch: NVlabs' ImageNet code
    (`torch.norm(inputs_jit.view(bs, -1), dim=1).mean()`); their CIFAR-10 script takes the
    norm of the whole batch, which grows with the batch size."""
    return torch.linalg.vector_norm(x.flatten(1).float(), dim=1).mean()


def jensen_shannon(logits_p: torch.Tensor, logits_q: torch.Tensor, T: float) -> torch.Tensor:
    """JS divergence between the temperature-T softmaxes, averaged over the batch (nats)."""
    p, q = F.softmax(logits_p.float() / T, dim=1), F.softmax(logits_q.float() / T, dim=1)
    log_m = (0.5 * (p + q)).clamp_min(1e-12).log()

    def kl_to_m(a: torch.Tensor) -> torch.Tensor:
        return (a * (a.clamp_min(1e-12).log() - log_m)).sum(dim=1)

    return (0.5 * (kl_to_m(p) + kl_to_m(q))).mean()


def nvlabs_jensen_shannon(logits_p: torch.Tensor, logits_q: torch.Tensor,
                          T: float) -> torch.Tensor:
    """The divergence NVlabs' code uses for the competition (deepinversion.py and the CIFAR-10
    script): the temperature-T softmaxes P, Q and their mean M, each then clamped to
    [0.01, 0.99], and 0.5 KL(M||P) + 0.5 KL(M||Q) averaged over the batch - as their
    KLDivLoss(log P, M) computes it, the KL from M rather than to it."""
    p, q = F.softmax(logits_p.float() / T, dim=1), F.softmax(logits_q.float() / T, dim=1)
    m = 0.5 * (p + q)
    p, q, m = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99), m.clamp(0.01, 0.99)

    def kl_from_m(a: torch.Tensor) -> torch.Tensor:
        return (m * (m.log() - a.log())).sum(dim=1)

    return (0.5 * (kl_from_m(p) + kl_from_m(q))).mean()


COMPETITION_FORMS = {"js": jensen_shannon, "nvlabs": nvlabs_jensen_shannon}


def competition(teacher_logits: torch.Tensor, student_logits: torch.Tensor, T: float,
                form: str = "js") -> torch.Tensor:
    """Adaptive DeepInversion's term, 1 - JS(p_T, p_S) clipped to [0, 1]: small where the
    student disagrees with the teacher, so minimising it favours such images. `form`: the
    paper's JS ("js") or NVlabs' clamped variant ("nvlabs")."""
    return 1 - COMPETITION_FORMS[form](teacher_logits, student_logits, T).clamp(0, 1)


def as_pool_dtype(images: torch.Tensor, dtype: str) -> torch.Tensor:
    """Pool images (float pixels, or uint8 levels) as `dtype` (POOL_DTYPES): float32 pixels
    as they are, or uint8, clamped to [0, 1] and quantised."""
    if dtype == "float32":
        return unit_pixels(images)
    if images.dtype == torch.uint8:
        return images
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


def balanced_labels(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """n targets with every class equally often (up to one), in random order."""
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=generator)]


POOL_DTYPES = ("float32", "uint8")


@dataclass
class SynthesisSettings(MethodSettings):
    """How a data-free method makes its pool (conf/method/deepinversion.yaml explains each)."""
    pool_size: int = MISSING  # images synthesised
    batch_size: int = MISSING  # images optimised together
    iterations: int = MISSING  # Adam steps per batch
    lr: float = MISSING
    bn_weight: float = MISSING  # alpha_f; 0 gives DeepDream
    first_bn_weight: float = MISSING
    tv_weight: float = MISSING
    l2_weight: float = MISSING
    jitter: int = MISSING  # pixels of random roll per iteration
    flip: bool = MISSING
    multi_resolution: bool = MISSING  # first half of the iterations seen 2x2-average-pooled
    clamp: bool = MISSING  # clamp to the pixel range after every step
    pool_dtype: str = MISSING  # float32: the optimised pixels as they are | uint8: quantised

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("pool_size", "batch_size"):
            require(getattr(self, key) >= 1, f"method.{key}", getattr(self, key), "use >= 1")
        require(self.iterations >= 0, "method.iterations", self.iterations,
                "use >= 0 (0: the pool is the starting noise, a baseline)")
        require(self.lr > 0, "method.lr", self.lr, "the learning rate must be > 0")
        require(self.pool_dtype in POOL_DTYPES, "method.pool_dtype", self.pool_dtype,
                f"use one of {', '.join(POOL_DTYPES)}")
        for key in ("bn_weight", "first_bn_weight", "tv_weight", "l2_weight", "jitter"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), "use >= 0")


@dataclass
class Competition:
    """Adaptive DeepInversion's term: weight alpha_c of 1 - JS at temperature T, in the paper's
    form or NVlabs' (COMPETITION_FORMS)."""
    weight: float
    T: float
    form: str = "js"


class Synthesizer:
    """Optimises image batches against a frozen teacher (and, for ADI, a student)."""

    def __init__(self, teacher: Classifier, settings: SynthesisSettings, run: Run,
                 competition: Competition | None = None, logged_batches: int = 0):
        self.teacher = teacher
        self.settings = settings
        self.run = run  # autocast, the networks' memory format, and the sink for loss terms
        self.competition = competition
        self.batches: dict[tuple, ImageBatch] = {}
        # batches optimised by the run so far (earlier pools' included): the step of the rows
        # of loss terms, which go on across Adaptive DeepInversion's rounds
        self.optimised = logged_batches
        # the normalised-space values of pixel 0 and pixel 1, per channel (`clamp`'s range)
        self.low, self.high = (0 - teacher.mean) / teacher.std, (1 - teacher.mean) / teacher.std

    @property
    def captured(self) -> bool:
        """Whether any of its iterations was replayed as a CUDA graph."""
        return any(images.replay.captured for images in self.batches.values())

    def losses(self, x: torch.Tensor, labels: torch.Tensor, bn: BatchNormStatistics,
               student: Classifier | None) -> dict[str, torch.Tensor]:
        s = self.settings
        bn.terms.clear()  # an unfinished forward's (a failed capture's) must not count
        with self.run.autocast():
            logits = self.teacher.net(x)
        terms = {"ce": F.cross_entropy(logits.float(), labels), "bn": bn.loss(),
                 "tv": total_variation(x), "l2": l2_prior(x)}
        loss = (terms["ce"] + s.bn_weight * terms["bn"] + s.tv_weight * terms["tv"]
                + s.l2_weight * terms["l2"])
        if student is not None and self.competition is not None:
            with self.run.autocast():
                student_logits = student.net(x)
            terms["competition"] = competition(logits, student_logits, self.competition.T,
                                               self.competition.form)
            loss = loss + self.competition.weight * terms["competition"]
        terms["loss"] = loss
        return terms

    def batch(self, labels: torch.Tensor, image_size: int, generator: torch.Generator,
              student: Classifier | None = None) -> torch.Tensor:
        """One batch of images for `labels` (`generator`: a CPU generator for the start and
        the jitter), in pixels: float32 as optimised, even where outside [0, 1] (what NVlabs'
        CIFAR-10 code distils from), or uint8, clamped to [0, 1] and quantised (images as a
        file stores them). With 0 iterations the batch is the starting noise (a baseline)."""
        pixels = self.optimise(labels, image_size, generator, student) * self.teacher.std
        return as_pool_dtype(pixels + self.teacher.mean, self.settings.pool_dtype)

    def optimise(self, labels: torch.Tensor, image_size: int, generator: torch.Generator,
                 student: Classifier | None = None) -> torch.Tensor:
        """The optimised batch in the network's normalised input space. With `clamp` it is
        kept inside the pixel range after every Adam step (NVlabs' ImageNet code); without,
        as NVlabs' CIFAR-10 code does, it moves freely."""
        s = self.settings
        channels = self.teacher.mean.shape[1]
        x = torch.randn(len(labels), channels, image_size, image_size,
                        generator=generator).to(labels.device)
        bn = BatchNormStatistics(self.teacher.net, s.first_bn_weight)
        self.teacher.eval()
        if student is not None:
            student.eval()
        try:
            # NVlabs' ImageNet code: one full-size tensor, seen 2x2-average-pooled (with half
            # the jitter) in the first phase, then as it is; a fresh Adam for each phase
            phases = [(True, math.ceil(s.iterations / 2), s.jitter // 2),
                      (False, s.iterations // 2, s.jitter)] \
                if s.multi_resolution else [(False, s.iterations, s.jitter)]
            terms = {}
            for pooled, iterations, jitter in phases:
                images = self.images_like(x, iterations, student, pooled)
                images.restart(x, labels, jitter_draws(iterations, jitter, s.flip, generator))
                for _ in range(iterations):
                    terms = images.replay(partial(self.iteration, images, bn, student, pooled))
                x = images.x.detach().clone()  # the next batch restarts the same tensor
        finally:
            bn.remove()
        self.optimised += 1
        self.run.sink.log({f"synth/{k}": v.item() for k, v in terms.items()}, self.optimised,
                          counter="synth/batch")
        return x

    def images_like(self, x: torch.Tensor, iterations: int, student: Classifier | None,
                    pooled: bool) -> ImageBatch:
        """The ImageBatch for batches shaped like `x`, made once and restarted for each: its
        captured iteration serves every batch of the pool of that shape (and student, and
        phase)."""
        key = (tuple(x.shape), iterations, id(student), pooled)
        if key not in self.batches:
            capture = self.run.cuda_graph and x.device.type == "cuda"
            self.batches[key] = ImageBatch(x, iterations, self.settings.lr, capture)
        return self.batches[key]

    def iteration(self, images: ImageBatch, bn: BatchNormStatistics,
                  student: Classifier | None, pooled: bool) -> dict[str, torch.Tensor]:
        """One Adam step on the jittered (and, in a multi-resolution run's first phase,
        2x2-average-pooled) images' loss: device work only."""
        x = F.avg_pool2d(images.x, 2) if pooled else images.x
        x = jittered(x, images.next_draw()).contiguous(memory_format=self.run.memory_format)
        terms = self.losses(x, images.labels, bn, student)
        images.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward(inputs=[images.x])  # the networks' weights need no gradient
        images.optimizer.step()
        if self.settings.clamp:
            with torch.no_grad():
                images.x.clamp_(self.low, self.high)
        return {key: value.detach() for key, value in terms.items()}


def jitter_draws(iterations: int, pixels: int, flip: bool,
                 generator: torch.Generator) -> torch.Tensor:
    """Each iteration's random roll (dy, dx) of up to `pixels` and flip (0 or 1), as an
    (iterations, 3) tensor, drawn from the batch's CPU generator in the loop's order."""
    draws = torch.zeros(iterations, 3, dtype=torch.long)
    for row in draws:
        if pixels:
            row[:2] = torch.randint(-pixels, pixels + 1, (2,), generator=generator)
        if flip and torch.rand((), generator=generator).item() < 0.5:
            row[2] = 1
    return draws


def jittered(x: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
    """`x` rolled by (dy, dx) and then, if flip, mirrored left to right - as torch.roll and
    torch.flip do it, but as one gather of pixel indices computed on the device from the
    draw, so a captured iteration applies each replay's own draw."""
    height, width = x.shape[-2:]
    dy, dx, flip = draw.unbind()
    rows = (torch.arange(height, device=x.device) - dy) % height
    columns = torch.arange(width, device=x.device)
    columns = (torch.where(flip.bool(), width - 1 - columns, columns) - dx) % width
    pixels = (rows[:, None] * width + columns[None, :]).flatten()
    return x.flatten(2).index_select(2, pixels).view_as(x)


class ImageBatch:
    """A batch of images being optimised at one resolution, with all the state of its loop on
    the device - the images, their Adam, every iteration's jitter draw and which is next - so
    an iteration runs eagerly or as a replay of one CUDA graph (`replay`, when the run
    captures: after a few eager iterations of the first batch, every iteration of every batch
    of this shape is a replay). `restart` starts the next batch in place."""

    def __init__(self, like: torch.Tensor, iterations: int, lr: float, capture: bool):
        self.x = torch.zeros_like(like, requires_grad=True)
        self.labels = torch.zeros(len(like), dtype=torch.long, device=like.device)
        self.draws = torch.zeros(iterations, 3, dtype=torch.long, device=like.device)
        self.next = torch.zeros((), dtype=torch.long, device=like.device)
        # fused on CUDA, eager or captured alike (the CPU keeps torch's default Adam)
        self.optimizer = torch.optim.Adam(
            [self.x], lr=lr, **({"fused": True, "capturable": capture} if like.is_cuda else {}))
        self.replay = Replay(like.device, capture, "the synthesis iteration")

    def restart(self, x: torch.Tensor, labels: torch.Tensor, draws: torch.Tensor) -> None:
        """Start from `x` towards `labels` with fresh Adam moments, the draws from the first."""
        with torch.no_grad():
            self.x.copy_(x)
        self.labels.copy_(labels)
        self.draws.copy_(draws)
        self.next.zero_()
        for value in self.optimizer.state[self.x].values():
            value.zero_()  # Adam's step count and moments: as a fresh Adam's

    def next_draw(self) -> torch.Tensor:
        """This iteration's jitter draw, and the counter moved on: device work only."""
        draw = self.draws.index_select(0, self.next.view(1))[0]  # no read-back to the host
        self.next += 1
        return draw
