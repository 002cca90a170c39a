"""Self-training with a noised student that becomes the next teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdrun.data import ImageData, TensorSplit
from kdrun.data.augment import rand_augment, random_crop_flip
from kdrun.data.types import seeded_permutation
from kdrun.errors import ConfigError, require
from kdrun.methods.base import METHODS, Method, Stage, StageContext, freeze
from kdrun.methods.pseudo_labels import predict, select

PREDICT_BATCH = 512


@METHODS.register("noisy_student")
class NoisyStudent(Method):
    """Self-training with Noisy Student (Xie, Luong, Hovy, Le; CVPR 2020, arXiv 1911.04252):
    round 0 trains a teacher on the labelled images without noise; each later round
    pseudo-labels the unlabelled images with the un-noised teacher (confidence threshold,
    per-class balancing), trains a new, equal or larger student on labelled + pseudo-labelled
    images with input noise (RandAugment) and model noise (classifier dropout, stochastic depth
    with linear decay), and makes it the next teacher. Soft pseudo-labels are the teacher's
    probabilities on the un-noised image, computed as the student trains."""

    augments_batches = True

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
        require(0 <= settings.threshold < 1, "method.threshold", settings.threshold,
                "a confidence in [0, 1)")
        require(0 < settings.survival <= 1, "method.survival", settings.survival,
                "the last block's survival probability, (0, 1]")
        require(0 <= settings.dropout < 1, "method.dropout", settings.dropout, "use [0, 1)")

    def stages(self, data: ImageData, epochs: int, context: StageContext):
        labelled, unlabelled = self.split(data, context)
        self.student = self.make_model(self.archs[0], drop_rate=0.0).to(
            context.device, memory_format=context.memory_format)
        yield Stage("round0", ImageData(labelled, data.test, data.classes), epochs)
        for r in range(1, self.rounds + 1):
            self.teacher = freeze(self.student).eval()
            pseudo = self.pseudo_labelled(unlabelled, context, round_=r)
            combined = TensorSplit(torch.cat([labelled.images, pseudo.images]),
                                   torch.cat([labelled.labels, pseudo.labels]))
            self.student = self.make_model(self.archs[r], drop_rate=self.dropout,
                                           drop_path_rate=self.drop_path).to(
                context.device, memory_format=context.memory_format)
            self.noisy = True
            yield Stage(f"round{r}", ImageData(combined, data.test, data.classes), epochs)

    def split(self, data: ImageData, context: StageContext) -> tuple[TensorSplit, TensorSplit]:
        """The labelled share of the training set (seeded), and the unlabelled images: the rest
        of it, or the training images of `unlabelled` (their labels are never read)."""
        if not isinstance(data.train, TensorSplit):
            raise ConfigError("method=noisy_student needs an in-memory data set (cifar10, "
                              "cifar100, svhn, cinic10, digits), not a DataLoader one")
        order = seeded_permutation(len(data.train), self.split_seed)
        n = max(1, round(self.labelled_fraction * len(order)))
        labelled = data.train.take(order[:n])
        if self.unlabelled is not None:
            return labelled, context.load_dataset(self.unlabelled, self.unlabelled_root).train
        return labelled, data.train.take(order[n:])

    def pseudo_labelled(self, unlabelled: TensorSplit, context: StageContext,
                        round_: int) -> TensorSplit:
        """The teacher's labels for the kept unlabelled images, offset by the class count so a
        training step tells them from true labels."""
        predicted, confidence = predict(self.teacher, unlabelled.images, PREDICT_BATCH,
                                        context.device, context.autocast)
        index = select(predicted, confidence, self.num_classes, self.threshold, self.balance,
                       self.per_class)
        context.results[f"round{round_}/pseudo_labelled"] = len(index)
        return TensorSplit(unlabelled.images[index], predicted[index] + self.num_classes)

    def training_step(self, images, labels):
        is_pseudo = labels >= self.num_classes
        targets = labels % self.num_classes
        inputs = random_crop_flip(images, *self.crop)
        if self.noisy:
            inputs = rand_augment(inputs, *self.randaugment)
        logits = self.student(inputs)
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        if self.noisy and self.soft:
            with torch.no_grad():  # (inference-mode tensors cannot meet autograd below)
                teacher_probabilities = self.teacher(images).float().softmax(dim=1)
            soft_ce = -(teacher_probabilities * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
            ce = torch.where(is_pseudo, soft_ce, ce)
        pseudo_share = is_pseudo.float().mean()
        return {"loss": ce.mean(), "logits": logits, "labels": targets,
                "pseudo_share": pseudo_share}
