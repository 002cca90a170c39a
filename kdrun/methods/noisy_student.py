"""Self-training with a noised student that becomes the next teacher."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset

from kdrun.data import ImageData, TensorSplit
from kdrun.data.augment import (
    center_crop_transform,
    rand_augment,
    random_crop_flip,
    resized_crop_transform,
)
from kdrun.data.image_folder import ImageFiles, list_image_files, read_images
from kdrun.data.types import seeded_permutation, take
from kdrun.data.views import Relabelled, with_transform
from kdrun.errors import ConfigError, require
from kdrun.methods.base import METHODS, Method, Stage, StageContext, freeze
from kdrun.methods.pseudo_labels import predict, select

PREDICT_BATCH = 512
FOLDER = "folder"  # method.unlabelled=folder: every image under method.unlabelled_root


@METHODS.register("noisy_student")
class NoisyStudent(Method):
    """Self-training with Noisy Student (Xie, Luong, Hovy, Le; CVPR 2020, arXiv 1911.04252):
    round 0 trains a teacher on the labelled images without noise; each later round
    pseudo-labels the unlabelled images with the un-noised teacher (confidence threshold,
    per-class balancing), trains a new, equal or larger student on labelled + pseudo-labelled
    images with input noise (RandAugment) and model noise (classifier dropout, stochastic depth
    with linear decay), and makes it the next teacher. Soft pseudo-labels are the teacher's
    probabilities on the un-noised image, computed once per round. In-memory data sets are
    noised in batches on the device; large-image ones (ImageNet) per image in the DataLoader
    workers."""

    augments_batches = True  # in-memory data; a DataLoader data set is noised by its transform

    def __init__(self, student, make_model, rounds: int, archs: list[str],
                 labelled_fraction: float, unlabelled: str | None, unlabelled_root: str | None,
                 split_seed: int, soft: bool, threshold: float, balance: bool,
                 per_class: int | None, randaugment_ops: int, randaugment_magnitude: int,
                 dropout: float, survival: float, crop_padding: int, hflip: bool):
        super().__init__(student)
        self.make_model = make_model
        self.archs = list(archs) or [student.arch] * (rounds + 1)
        self.rounds = rounds
        self.labelled_fraction = labelled_fraction
        self.unlabelled = unlabelled
        self.unlabelled_root = unlabelled_root
        self.split_seed = split_seed
        self.soft = soft
        self.threshold = threshold
        self.balance = balance
        self.per_class = per_class
        self.randaugment = (randaugment_ops, randaugment_magnitude)
        self.dropout = dropout
        self.drop_path = 1 - survival
        self.crop = (crop_padding, hflip)
        self.noisy = False  # round 0 trains the first teacher without noise
        self.num_classes = student.num_classes
        self.pseudo_targets = torch.zeros(0, self.num_classes)  # set each round

    @classmethod
    def check_settings(cls, settings) -> None:
        from kdrun.models import check_arch

        require(settings.rounds >= 1, "method.rounds", settings.rounds, "use >= 1")
        if settings.archs:
            require(len(settings.archs) == settings.rounds + 1, "method.archs",
                    list(settings.archs), f"give rounds + 1 = {settings.rounds + 1} "
                    "architectures (round 0's teacher first), or [] for student= throughout")
            for arch in settings.archs:
                check_arch(arch, key="method.archs")
        require(0 < settings.labelled_fraction <= 1, "method.labelled_fraction",
                settings.labelled_fraction, "the share of the training set kept labelled, (0, 1]")
        if settings.labelled_fraction == 1 and settings.unlabelled is None:
            raise ConfigError("method.labelled_fraction=1 leaves no unlabelled images: lower it, "
                              "or name a data set as method.unlabelled")
        if settings.unlabelled == FOLDER:
            require(settings.unlabelled_root is not None, "method.unlabelled_root", None,
                    "method.unlabelled=folder reads the images under this folder: set it")
        require(0 <= settings.threshold < 1, "method.threshold", settings.threshold,
                "a confidence in [0, 1)")
        require(0 < settings.survival <= 1, "method.survival", settings.survival,
                "the last block's survival probability, (0, 1]")
        require(0 <= settings.dropout < 1, "method.dropout", settings.dropout, "use [0, 1)")

    def stages(self, data: ImageData, epochs: int, context: StageContext):
        labelled, unlabelled = self.split(data, context)
        self.augments_batches = isinstance(labelled, TensorSplit)
        self.student = self.make_model(self.archs[0], drop_rate=0.0).to(
            context.device, memory_format=context.memory_format)
        yield Stage("round0", ImageData(labelled, data.test, data.classes), epochs)
        for r in range(1, self.rounds + 1):
            self.teacher = freeze(self.student).eval()
            train = self.with_pseudo_labels(labelled, unlabelled, context, round_=r)
            self.student = self.make_model(self.archs[r], drop_rate=self.dropout,
                                           drop_path_rate=self.drop_path).to(
                context.device, memory_format=context.memory_format)
            self.noisy = True
            yield Stage(f"round{r}", ImageData(train, data.test, data.classes), epochs)

    def split(self, data: ImageData, context: StageContext):
        """The labelled share of the training set (seeded), and the unlabelled images: the rest
        of it, or the training images of `unlabelled` (their labels are never read)."""
        order = seeded_permutation(len(data.train), self.split_seed)
        n = max(1, round(self.labelled_fraction * len(order)))
        labelled = take(data.train, order[:n])
        if self.unlabelled is None:
            return labelled, take(data.train, order[n:])
        if self.unlabelled == FOLDER:
            files = list_image_files(Path(self.unlabelled_root).expanduser())
            if isinstance(labelled, TensorSplit):
                return labelled, read_images(files, context.image_size)
            return labelled, ImageFiles(files)
        unlabelled = context.load_dataset(self.unlabelled, self.unlabelled_root).train
        if isinstance(unlabelled, TensorSplit) != isinstance(labelled, TensorSplit):
            raise ConfigError(f"method.unlabelled={self.unlabelled} and the labelled data set "
                              "must both be small-image (in-memory) or both large-image "
                              "(DataLoader) data sets: choose one of the same kind")
        return labelled, unlabelled

    def with_pseudo_labels(self, labelled, unlabelled, context: StageContext, round_: int):
        """Labelled + kept pseudo-labelled images. A pseudo-labelled image's label is the
        class count plus its row in `self.pseudo_targets` (the teacher's probabilities), so a
        training step tells it from a true label."""
        in_memory = isinstance(unlabelled, TensorSplit)
        scored = unlabelled if in_memory else with_transform(
            unlabelled, center_crop_transform(context.image_size))
        probabilities = predict(self.teacher, context.eval_loader(scored, PREDICT_BATCH),
                                context.autocast)
        confidence, predicted = probabilities.float().max(dim=1)
        index = select(predicted, confidence, self.num_classes, self.threshold, self.balance,
                       self.per_class)
        context.results[f"round{round_}/pseudo_labelled"] = len(index)
        self.pseudo_targets = probabilities[index].float().to(context.device)
        marks = self.num_classes + torch.arange(len(index))
        if in_memory:
            return TensorSplit(torch.cat([labelled.images, unlabelled.images[index]]),
                               torch.cat([labelled.labels, marks]))
        noised = resized_crop_transform(context.image_size, self.crop[1], self.randaugment)
        return ConcatDataset([with_transform(labelled, noised),
                              Relabelled(with_transform(unlabelled, noised), index, marks)])

    def training_step(self, images, labels):
        inputs = images
        if self.augments_batches:  # in-memory data: crop, flip and noise the batch here
            inputs = random_crop_flip(images, *self.crop)
            if self.noisy:
                inputs = rand_augment(inputs, *self.randaugment)
        logits = self.student(inputs)
        if not self.noisy:  # round 0: labelled images only
            ce = F.cross_entropy(logits.float(), labels)
            return {"loss": ce, "logits": logits}
        is_pseudo = labels >= self.num_classes
        rows = (labels - self.num_classes).clamp_min(0)
        teacher_probabilities = self.pseudo_targets[rows]
        targets = torch.where(is_pseudo, teacher_probabilities.argmax(dim=1), labels)
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        if self.soft:
            soft_ce = -(teacher_probabilities * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
            ce = torch.where(is_pseudo, soft_ce, ce)
        return {"loss": ce.mean(), "logits": logits, "labels": targets,
                "pseudo_share": is_pseudo.float().mean()}
