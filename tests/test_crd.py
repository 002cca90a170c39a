"""CRD: its NCE loss against the paper's Eq. 18 as the official code computes it, the memory
bank's sampling and update, and the loaders' index contract it relies on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdrun.data import ImageData, TensorSplit, make_loader
from kdrun.errors import ConfigError
from kdrun.methods import build_method
from kdrun.methods.base import Networks
from kdrun.methods.crd import MemoryBank, nce_loss
from kdrun.models import build_model

from conftest import compose_config

LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3, 3])


def test_nce_loss_is_eq_18_with_noise_probability_one_over_n():
    scores = torch.tensor([[2.0, 0.1, 0.5, 0.05], [0.3, 1.2, 0.2, 0.4]])
    n, m = 100, 3
    want = 0.0
    for row in scores.tolist():
        pos, negs = row[0], row[1:]
        want += math.log(pos / (pos + m / n + 1e-7))
        want += sum(math.log((m / n) / (q + m / n + 1e-7)) for q in negs)
    assert nce_loss(scores, n).item() == pytest.approx(-want / 2, rel=1e-6)


def test_negatives_come_uniformly_from_the_other_classes_and_the_positive_is_the_image():
    torch.manual_seed(0)
    bank = MemoryBank(LABELS, dim=4, negatives=3000, device=torch.device("cpu"))
    indices = torch.tensor([0, 4, 8])
    rows = bank.contrast_indices(indices)
    assert rows.shape == (3, 3001) and torch.equal(rows[:, 0], indices)
    for i, image in enumerate(indices.tolist()):
        drawn = rows[i, 1:]
        others = (LABELS != LABELS[image]).nonzero().flatten()
        assert not (LABELS[drawn] == LABELS[image]).any()
        counts = torch.bincount(drawn, minlength=len(LABELS))[others].float()
        assert counts.min() > 0  # every image of another class can be drawn
        expected = 3000 / len(others)
        assert ((counts - expected).abs() / expected).max() < 0.2  # uniformly


def test_the_bank_moves_each_row_to_the_normalised_momentum_average():
    bank = MemoryBank(LABELS, dim=4, negatives=2, device=torch.device("cpu"))
    before = bank.student.clone()
    first = before[[1, 5]].norm(dim=1)
    assert ((first > 0) & (first < 2 * 1 / math.sqrt(4 / 3))).all()  # uniform init, unnormalised
    v = F.normalize(torch.randn(2, 4), dim=1)
    bank.update(bank.student, torch.tensor([1, 5]), v, 0.5)
    want = F.normalize(0.5 * before[[1, 5]] + 0.5 * v, dim=1)
    assert torch.allclose(bank.student[[1, 5]], want, atol=1e-6)
    untouched = [i for i in range(10) if i not in (1, 5)]
    assert torch.equal(bank.student[untouched], before[untouched])


def test_scores_are_bank_rows_times_the_embedding():
    bank = MemoryBank(LABELS, dim=4, negatives=2, device=torch.device("cpu"))
    v = torch.randn(3, 4)
    rows = torch.tensor([[0, 1, 2], [4, 9, 8], [8, 0, 0]])
    by_hand = torch.stack([bank.student[r] @ v[i] for i, r in enumerate(rows)])
    assert torch.allclose(MemoryBank.scores(bank.student, v, rows), by_hand, atol=1e-6)


def crd_method(**overrides):
    torch.manual_seed(0)
    make = lambda arch: build_model(arch, 4, [0.5] * 3, [0.25] * 3)  # noqa: E731
    cfg = compose_config("method=crd", "method.negatives=5",
                         *(f"method.{k}={v}" for k, v in overrides.items())).method
    method = build_method(cfg, Networks(make("resnet8"), make("resnet8").eval(), make,
                                        image_size=16))
    images = torch.rand(10, 3, 16, 16)
    split = TensorSplit((images * 255).to(torch.uint8), LABELS % 4)
    next(method.stages(ImageData(split, split, list("abcd")), 1, run=None))
    return method.train(), images


def test_the_step_is_ce_plus_beta_times_both_directions_and_z_is_set_once():
    method, images = crd_method(kd_weight=1.0)
    labels, indices = LABELS % 4, torch.arange(10)
    out = method.training_step(images, labels, indices)
    z = method.z.clone()
    assert (z > 0).all()
    assert out["loss"].item() == pytest.approx(
        out["ce"].item() + out["kd"].item() + 0.8 * out["crd"].item(), rel=1e-5)
    rows_before = method.bank.student.clone()
    method.after_update()  # the rows move after the step, to the step's embeddings
    assert not torch.equal(method.bank.student, rows_before)
    method.training_step(images, labels, indices)
    assert torch.equal(method.z, z)  # the first batch's normaliser stays


def test_a_bank_with_as_many_negatives_as_images_is_one_line_before_the_teacher(tmp_path):
    from kdrun.jobs import train

    cfg = compose_config("method=crd", "method.negatives=100000",
                         f"teacher.cache_dir={tmp_path}/teachers")
    with pytest.raises(ConfigError, match="method.negatives=100000.*training images"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "teachers").exists()


def test_loaders_hand_out_each_images_index_in_the_split(tmp_path):
    from kdrun.runtime.run import Run

    cfg = compose_config("dataset.num_workers=0")
    run = Run.start(cfg, Path(tmp_path), sink=None)
    images = torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1).expand(12, 3, 2, 2)
    split = TensorSplit(images.contiguous(), torch.arange(12) % 3)
    seen = []
    for batch_images, labels, indices in make_loader(split, 4, run, train=True, augment=False,
                                                     with_indices=True):
        assert torch.equal(labels, indices % 3)
        assert torch.equal((batch_images[:, 0, 0, 0] * 255).round().long(), indices)
        seen += indices.tolist()
    assert sorted(seen) == list(range(12))

    class Files(torch.utils.data.Dataset):  # the DataLoader path
        targets = (torch.arange(12) % 3).tolist()

        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.full((3, 2, 2), float(i)), self.targets[i]

    seen = []
    for batch_images, labels, indices in make_loader(Files(), 4, run, train=True,
                                                     with_indices=True):
        assert torch.equal(batch_images[:, 0, 0, 0].long(), indices)
        assert torch.equal(labels, indices % 3)
        seen += indices.tolist()
    assert sorted(seen) == list(range(12))
