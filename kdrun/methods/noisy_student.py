"""Self-training with a noised student that becomes the next teacher."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch.utils.data import ConcatDataset

from kdrun.checks import require
from kdrun.data import (
    BatchMix,
    ImageData,
    TensorSplit,
    load_named_dataset,
    make_loader,
)
from kdrun.data.augment import center_crop_transform, random_crop_flip, resized_crop_transform
from kdrun.data.image_folder import ImageFiles, list_image_files, read_images
from kdrun.data.randaugment import RandAugment
from kdrun.data.types import seeded_permutation, take
from kdrun.data.views import Relabelled, with_transform
from kdrun.errors import ConfigError
from kdrun.methods.base import Method, MethodSettings, Networks, Stage, freeze
from kdrun.methods.pseudo_labels import predict, select
from kdrun.methods.weight_average import WeightAverage
from kdrun.models import check_arch
from kdrun.models.prepare import prepare
from kdrun.runtime.run import Run

PREDICT_BATCH = 512
log = logging.getLogger(__name__)
FOLDER = "folder"  # method.unlabelled=folder: every image under method.unlabelled_root


@dataclass
class RoundSettings:
    """One round's own noise and batch ratio, as the official scripts set them per model
    (null: the method's value)."""
    dropout: float | None = None
    randaugment_ops: int | None = None
    randaugment_magnitude: float | None = None
    unlabel_ratio: float | None = None


@dataclass
class NoisyStudentSettings(MethodSettings):
    rounds: int = MISSING  # student rounds after the first teacher
    archs: list[str] = MISSING  # one architecture per round, round 0's first ([]: student=)
    labelled_fraction: float = MISSING
    unlabelled: str | None = MISSING  # a data set's name | folder | null: the rest
    unlabelled_root: str | None = MISSING
    split_seed: int = MISSING
    soft: bool = MISSING  # soft pseudo-labels (the teacher's probabilities)
    threshold: float = MISSING  # confidence below which unlabelled images are dropped
    balance: bool = MISSING
    per_class: int | None = MISSING
    randaugment_ops: int = MISSING  # input noise: RandAugment N (0: none)
    randaugment_magnitude: float = MISSING  # and M, on the official scale (level / 10)
    dropout: float = MISSING  # model noise: dropout before the classifier
    survival: float = MISSING  # stochastic depth: survival of the last residual block
    crop_padding: int = MISSING  # the data set's own augmentation, every round
    hflip: bool = MISSING
    noise_first_teacher: bool = MISSING  # round 0 trains with the students' noise
    label_smoothing: float = MISSING  # on the cross-entropy to labels and hard pseudo-labels
    unlabel_ratio: float | None = MISSING  # pseudo-labelled per labelled image in each batch
    per_round: list[RoundSettings] = MISSING  # [] or one per round, round 0's first
    weight_average: float | None = MISSING  # decay of the weights' moving average | null

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.rounds >= 1, "method.rounds", self.rounds, "use >= 1")
        if self.archs:
            require(len(self.archs) == self.rounds + 1, "method.archs", self.archs,
                    f"give rounds + 1 = {self.rounds + 1} architectures (round 0's teacher "
                    "first), or [] for student= throughout")
            for arch in self.archs:
                check_arch(arch, key="method.archs")
        require(0 < self.labelled_fraction <= 1, "method.labelled_fraction",
                self.labelled_fraction, "the share of the training set kept labelled, (0, 1]")
        if self.labelled_fraction == 1 and self.unlabelled is None:
            raise ConfigError("method.labelled_fraction=1 leaves no unlabelled images: lower it, "
                              "or name a data set as method.unlabelled")
        if self.unlabelled == FOLDER:
            require(self.unlabelled_root is not None, "method.unlabelled_root", None,
                    "method.unlabelled=folder reads the images under this folder: set it")
        require(self.randaugment_ops >= 0, "method.randaugment_ops", self.randaugment_ops,
                "use >= 0 (0: no RandAugment)")
        require(self.randaugment_magnitude >= 0, "method.randaugment_magnitude",
                self.randaugment_magnitude, "use >= 0 (the official scale: 10 is each op's "
                "full argument, higher allowed)")
        require(0 <= self.threshold < 1, "method.threshold", self.threshold,
                "a confidence in [0, 1)")
        require(0 < self.survival <= 1, "method.survival", self.survival,
                "the last block's survival probability, (0, 1]")
        require(0 <= self.dropout < 1, "method.dropout", self.dropout, "use [0, 1)")
        require(0 <= self.label_smoothing < 1, "method.label_smoothing", self.label_smoothing,
                "use [0, 1)")
        if self.unlabel_ratio is not None:
            require(self.unlabel_ratio > 0, "method.unlabel_ratio", self.unlabel_ratio,
                    "use > 0, or null to mix by the sizes of the two sets")
        if self.weight_average is not None:
            require(0 < self.weight_average < 1, "method.weight_average", self.weight_average,
                    "a decay in (0, 1), e.g. the official 0.9999, or null for none")
        if self.per_round:
            require(len(self.per_round) == self.rounds + 1, "method.per_round",
                    len(self.per_round), f"give rounds + 1 = {self.rounds + 1} entries (round "
                    "0's first), or [] for the same settings every round")
            for r in range(self.rounds + 1):
                try:  # each round's values checked as the method's are
                    self.for_round(r)
                except ConfigError as err:
                    raise ConfigError(f"method.per_round[{r}]: {err}") from None

    def for_round(self, r: int) -> NoisyStudentSettings:
        """The settings round `r` trains with: the method's, with the round's own values."""
        if not self.per_round:
            return self
        own = {key: value for key, value in vars(self.per_round[r]).items()
               if value is not None}
        return replace(self, per_round=[], **own)


class NoisyStudent(Method):
    """Self-training with Noisy Student (Xie, Luong, Hovy, Le; CVPR 2020, arXiv 1911.04252):
    round 0 trains a teacher on the labelled images, noised like the students (the paper's
    baseline; `noise_first_teacher=false`: without noise); each later round pseudo-labels the
    unlabelled images with the un-noised teacher (confidence threshold, per-class balancing),
    trains a new, equal or larger student on labelled + pseudo-labelled images with input
    noise (RandAugment) and model noise (classifier dropout, stochastic depth with linear
    decay), and makes it the next teacher. As in the official code (google-research/
    noisystudent, main.py), every batch holds `trainer.batch_size` labelled images and
    `unlabel_ratio` times as many pseudo-labelled ones, an epoch is a pass over the labelled
    images, the loss is the labelled images' mean cross-entropy plus unlabel_ratio times the
    pseudo-labelled ones' mean, and the cross-entropy to labels (and to hard pseudo-labels) is
    label-smoothed. As there, a moving average of each round's weights (`weight_average`)
    evaluates and pseudo-labels. Soft pseudo-labels are the teacher's probabilities on the
    un-noised image, computed once per round. In-memory data sets are noised in batches on the
    device (RandAugment too, each image its own draw, so the step can be captured as a CUDA
    graph); large-image ones (ImageNet) per image in the DataLoader workers."""

    Settings = NoisyStudentSettings
    augments_batches = True  # in-memory data; a DataLoader data set is noised by its transform

    def __init__(self, settings: NoisyStudentSettings, networks: Networks):
        super().__init__(settings, networks)
        self.make_model = networks.make_model
        self.archs = list(settings.archs) or [self.student.arch] * (settings.rounds + 1)
        self.num_classes = self.student.num_classes
        self.noisy = False  # this round's student is noised; set by stages()
        self.in_memory = True  # in-memory data is noised here; set by stages()
        self.pseudo_targets = torch.zeros(0, self.num_classes)  # set each round
        self.now = settings.for_round(0)  # this round's settings; set by stages()
        self.rand_augment: RandAugment | None = None  # this round's; set by stages()
        self.average: WeightAverage | None = None  # of this round's student; set by stages()

    def stages(self, data: ImageData, epochs: int, run: Run):
        s = self.settings
        labelled, unlabelled = self.split(data, run)
        self.in_memory = isinstance(labelled, TensorSplit)
        self.start_round(0, run)
        augment = not self.in_memory  # the loader noises only what this method cannot
        self.noisy = s.noise_first_teacher
        self.student = prepare(self.build_student(self.archs[0]), run)
        self.average = self.averaged(self.archs[0], run)
        first = labelled if self.in_memory or not self.noisy else with_transform(
            labelled, self.noised_transform(run))
        yield Stage("round0", replace(data, train=first), epochs,
                    augment=augment, later_epochs=s.rounds * epochs)
        for r in range(1, s.rounds + 1):
            self.teacher = freeze(self.eval_model()).eval()
            self.start_round(r, run)
            train, kept = self.with_pseudo_labels(labelled, unlabelled, run)
            self.noisy = True
            self.student = prepare(self.build_student(self.archs[r]), run)
            self.average = self.averaged(self.archs[r], run)
            ratio = self.now.unlabel_ratio
            mix = None if ratio is None else BatchMix(len(labelled), ratio)
            yield Stage(f"round{r}", replace(data, train=train), epochs,
                        augment=augment, mix=mix, metrics={f"round{r}/pseudo_labelled": kept},
                        later_epochs=(s.rounds - r) * epochs)

    def start_round(self, r: int, run: Run) -> None:
        """Round `r`'s settings and input noise."""
        self.now = self.settings.for_round(r)
        self.rand_augment = self.official_rand_augment(run.cfg.dataset.image_size)

    def averaged(self, arch: str, run: Run) -> WeightAverage | None:
        """The moving average of this round's student, when the settings keep one."""
        decay = self.settings.weight_average
        if decay is None:
            return None
        return WeightAverage(prepare(self.build_student(arch), run), self.student, decay)

    def eval_model(self):
        """The round's student, or its weights' moving average when kept (the official code
        evaluates, saves and pseudo-labels with the average)."""
        return self.student if self.average is None else self.average.network

    def after_update(self) -> None:
        if self.average is not None:
            self.average.update(self.student)

    def build_student(self, arch: str):
        """A new network; with the model noise (dropout, stochastic depth) when noised."""
        s = self.now
        if not self.noisy:
            return self.make_model(arch, drop_rate=0.0)
        return self.make_model(arch, drop_rate=s.dropout, drop_path_rate=1 - s.survival)

    def official_rand_augment(self, image_size: int) -> RandAugment | None:
        """RandAugment N, M as the official preprocessing sets it up: for small (in-memory)
        images its 32-pixel one (Cutout and translations reach image_size // 8 at level 10,
        then every image gets a Cutout of side image_size // 2), for large ones its ImageNet
        one (40 and 100 pixels, no extra Cutout). None when N is 0."""
        s = self.now
        if not s.randaugment_ops:
            return None
        if not self.in_memory:
            return RandAugment(s.randaugment_ops, s.randaugment_magnitude)
        return RandAugment(s.randaugment_ops, s.randaugment_magnitude,
                           cutout_const=image_size // 8, translate_const=image_size // 8,
                           cutout_after=image_size // 4)

    def noised_transform(self, run: Run):
        """The input noise of the DataLoader path, per image: crop, flip and RandAugment."""
        return resized_crop_transform(run.cfg.dataset.image_size, self.settings.hflip,
                                      self.rand_augment)

    def split(self, data: ImageData, run: Run):
        """The labelled share of the training set (seeded), and the unlabelled images: the rest
        of it, or the training images of `unlabelled` (their labels are never read)."""
        s = self.settings
        order = seeded_permutation(len(data.train), s.split_seed)
        n = max(1, round(s.labelled_fraction * len(order)))
        labelled = take(data.train, order[:n])
        if s.unlabelled is None:
            return labelled, take(data.train, order[n:])
        if s.unlabelled == FOLDER:
            files = list_image_files(Path(s.unlabelled_root).expanduser())
            if isinstance(labelled, TensorSplit):
                return labelled, read_images(files, run.cfg.dataset.image_size)
            return labelled, ImageFiles(files)
        unlabelled = load_named_dataset(s.unlabelled, s.unlabelled_root, run.cfg.dataset,
                                        "method.unlabelled", run.cfg.cache_dir).train
        if isinstance(unlabelled, TensorSplit) != isinstance(labelled, TensorSplit):
            raise ConfigError(f"method.unlabelled={s.unlabelled} and the labelled data set "
                              "must both be small-image (in-memory) or both large-image "
                              "(DataLoader) data sets: choose one of the same kind")
        return labelled, unlabelled

    def with_pseudo_labels(self, labelled, unlabelled, run: Run):
        """Labelled + kept pseudo-labelled images, and how many were kept. A pseudo-labelled
        image's label is the class count plus its row in `self.pseudo_targets` (the teacher's
        probabilities), so a training step tells it from a true label."""
        s = self.settings
        image_size = run.cfg.dataset.image_size
        scored = unlabelled if self.in_memory else with_transform(
            unlabelled, center_crop_transform(image_size))
        log.info("pseudo-labelling %d unlabelled images with the round's teacher",
                 len(unlabelled))
        probabilities = predict(self.teacher, make_loader(scored, PREDICT_BATCH, run,
                                                          train=False, shard=True),
                                run.autocast)
        confidence, predicted = probabilities.float().max(dim=1)
        index = select(predicted, confidence, self.num_classes, s.threshold, s.balance,
                       s.per_class)
        log.info("pseudo-labels: %d images kept (threshold %.2f%s)", len(index), s.threshold,
                 ", balanced per class" if s.balance else "")
        self.pseudo_targets = probabilities[index].float().to(run.device)
        marks = self.num_classes + torch.arange(len(index))
        if self.in_memory:
            return TensorSplit(torch.cat([labelled.images, unlabelled.images[index]]),
                               torch.cat([labelled.labels, marks])), len(index)
        noised = self.noised_transform(run)
        return ConcatDataset([with_transform(labelled, noised),
                              Relabelled(with_transform(unlabelled, noised), index, marks)]
                             ), len(index)

    def training_step(self, images, labels):
        s = self.now
        inputs = images
        if self.in_memory:  # noise, crop and flip the batch here (the official order; the crop
            #                 pads with zeros, the official small_image_crop by reflection)
            if self.noisy and self.rand_augment is not None:
                inputs = self.rand_augment(inputs)
            inputs = random_crop_flip(inputs, s.crop_padding, s.hflip)
        logits = self.student(inputs)
        if not len(self.pseudo_targets):  # round 0, or a teacher that kept none: labels only
            ce = F.cross_entropy(logits.float(), labels, label_smoothing=s.label_smoothing)
            return {"loss": ce, "logits": logits}
        is_pseudo = labels >= self.num_classes
        rows = (labels - self.num_classes).clamp_min(0)
        teacher_probabilities = self.pseudo_targets[rows]
        targets = torch.where(is_pseudo, teacher_probabilities.argmax(dim=1), labels)
        ce = F.cross_entropy(logits.float(), targets, reduction="none",
                             label_smoothing=s.label_smoothing)
        if s.soft:
            soft_ce = -(teacher_probabilities * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
            ce = torch.where(is_pseudo, soft_ce, ce)
        return {"loss": self.data_loss(ce, is_pseudo), "logits": logits, "labels": targets,
                "pseudo_share": is_pseudo.float().mean()}

    def data_loss(self, ce: torch.Tensor, is_pseudo: torch.Tensor) -> torch.Tensor:
        """The official code's loss: the labelled images' mean plus unlabel_ratio times the
        pseudo-labelled ones' mean (masked sums: no data-dependent shapes, so the step can be
        captured); with `unlabel_ratio` null, batches mixed by the sets' sizes, the mean."""
        ratio = self.now.unlabel_ratio
        if ratio is None:
            return ce.mean()
        pseudo = is_pseudo.float()
        labelled = 1 - pseudo
        return ((ce * labelled).sum() / labelled.sum().clamp_min(1)
                + ratio * (ce * pseudo).sum() / pseudo.sum().clamp_min(1))
