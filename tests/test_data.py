"""Each data set's loader against tiny files written in its real on-disk format, and the
batched on-device augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdrun.data import TensorSplit, load_dataset, make_loader
from kdrun.data.augment import random_crop_flip
from kdrun.data.device_loader import DeviceLoader
from kdrun.errors import ConfigError, DataNotFoundError

from conftest import compose_config, make_run

RNG = np.random.default_rng(0)


def dataset_cfg(name: str, root: Path, *overrides: str):
    return compose_config(f"dataset={name}", f"dataset.root={root}", *overrides).dataset


def write_cifar(root: Path, folder: str, train_files: list[str], test_files: list[str],
                label_key: str, meta_file: str, names_key: str, classes: list[str], per_file=6):
    d = root / folder
    d.mkdir(parents=True)
    written = {}
    for name in train_files + test_files:
        data = RNG.integers(0, 256, (per_file, 3 * 32 * 32), dtype=np.uint8)
        labels = [i % len(classes) for i in range(per_file)]
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, label_key: labels}, f)
        written[name] = (data, labels)
    with open(d / meta_file, "wb") as f:
        pickle.dump({names_key: classes}, f)
    return written


def test_cifar10_reads_the_python_pickles(tmp_path):
    root = tmp_path
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
    written = write_cifar(root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                          ["test_batch"], "labels", "batches.meta", "label_names", classes)
    data = load_dataset(dataset_cfg("cifar10", root), "/tmp/unused")
    assert data.classes == classes
    assert data.train.images.shape == (30, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert len(data.test) == 6
    first = written["data_batch_1"][0][0].reshape(3, 32, 32)  # CIFAR rows are CHW, R then G, B
    assert torch.equal(data.train.images[0], torch.from_numpy(first))
    assert data.test.labels.tolist() == written["test_batch"][1]


def test_cifar100_reads_fine_labels(tmp_path):
    classes = [f"c{i}" for i in range(100)]
    write_cifar(tmp_path, "cifar-100-python", ["train"], ["test"], "fine_labels", "meta",
                "fine_label_names", classes, per_file=200)
    data = load_dataset(dataset_cfg("cifar100", tmp_path), "/tmp/unused")
    assert len(data.classes) == 100 and data.train.labels.max().item() == 99


def write_svhn(root: Path, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    from scipy.io import savemat

    raw = {}
    for split, n in sizes.items():
        raw[split] = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # X[h, w, c, n]
        y = np.array([[10], [1], [2], [3], [4], [5], [6], [7]][:n], dtype=np.uint8)
        savemat(root / f"{split}_32x32.mat", {"X": raw[split], "y": y})
    return raw


def test_svhn_reads_the_mat_files_and_maps_label_10_to_digit_0(tmp_path):
    raw = write_svhn(tmp_path, {"train": 8, "test": 4})
    data = load_dataset(dataset_cfg("svhn", tmp_path), "/tmp/unused")
    assert data.train.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert data.train.images.shape == (8, 3, 32, 32)
    assert data.train.images[3, 1, 5, 7].item() == raw["train"][5, 7, 1, 3]


def test_svhn_extra_adds_its_images_to_training_a_setting_of_its_own(tmp_path):
    from kdrun.data import dataset_settings

    write_svhn(tmp_path, {"train": 8, "test": 4, "extra": 5})
    cfg = dataset_cfg("svhn", tmp_path, "dataset.extra=true")
    assert dataset_settings(cfg).extra is True
    data = load_dataset(cfg, "/tmp/unused")
    assert len(data.train) == 8 + 5 and len(data.test) == 4
    assert data.train.labels[8:].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="dataset.extra is not a setting of data set cifar10"):
        dataset_settings(dataset_cfg("cifar10", tmp_path, "+dataset.extra=true"))


def write_image_folder(root: Path, classes: list[str], per_class: int, size: int = 32,
                       suffix: str = ".png") -> None:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i:04d}{suffix}")


def test_any_data_set_reads_a_train_test_image_folder_and_caches_the_decoding(tmp_path):
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
    write_image_folder(tmp_path / "data" / "train", classes, 3)
    write_image_folder(tmp_path / "data" / "test", classes, 1)
    cache = tmp_path / "cache"
    data = load_dataset(dataset_cfg("cifar10", tmp_path / "data"), str(cache))
    assert data.classes == classes and len(data.train) == 30 and len(data.test) == 10
    png = np.array(Image.open(tmp_path / "data" / "train" / "bird" / "0001.png"))
    index = (data.train.labels == 2).nonzero()[1].item()
    assert torch.equal(data.train.images[index], torch.from_numpy(png).permute(2, 0, 1))
    assert len(list((cache / "data").glob("*.pt"))) == 2
    again = load_dataset(dataset_cfg("cifar10", tmp_path / "data"), str(cache))
    assert torch.equal(again.train.images, data.train.images)


def test_image_folder_resizes_other_sizes_to_image_size(tmp_path):
    write_image_folder(tmp_path / "train", ["a", "b"], 2, size=40, suffix=".jpg")
    write_image_folder(tmp_path / "test", ["a", "b"], 1, size=40, suffix=".jpg")
    data = load_dataset(dataset_cfg("cinic10", tmp_path, "dataset.num_classes=2"),
                        str(tmp_path / "cache"))
    assert data.train.images.shape == (4, 3, 32, 32)


def test_imagenet_goes_through_the_dataloader_path(tmp_path):
    write_image_folder(tmp_path / "train", ["n01", "n02"], 3, size=48)
    write_image_folder(tmp_path / "val", ["n01", "n02"], 2, size=48)
    cfg = dataset_cfg("imagenet", tmp_path, "dataset.num_classes=2", "dataset.image_size=32",
                      "dataset.num_workers=0")
    data = load_dataset(cfg, str(tmp_path / "cache"))
    run = make_run("dataset=imagenet", f"dataset.root={tmp_path}", "dataset.num_classes=2",
                   "dataset.image_size=32", "dataset.num_workers=0")
    loader = make_loader(data.train, 2, run, train=True)
    images, labels = next(iter(loader))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and len(loader) == 3


def test_digits_are_a_seeded_split_of_the_bundled_1797_images():
    cfg = dataset_cfg("digits", "unused")
    a, b = load_dataset(cfg, "/tmp/unused"), load_dataset(cfg, "/tmp/unused")
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == round(1797 * 0.2)
    assert a.train.images.shape[1:] == (3, 32, 32)
    assert torch.equal(a.test.labels, b.test.labels)
    other = load_dataset(dataset_cfg("digits", "unused", "dataset.split_seed=1"), "/tmp/unused")
    assert not torch.equal(a.test.labels, other.test.labels)


def test_subsets_are_seeded_and_sized():
    cfg = dataset_cfg("digits", "unused", "dataset.train_subset=100", "dataset.test_subset=50")
    data = load_dataset(cfg, "/tmp/unused")
    assert (len(data.train), len(data.test)) == (100, 50)


@pytest.mark.parametrize(("name", "hint"), [
    ("cifar10", "dataset.download=true"), ("cifar100", "dataset.download=true"),
    ("svhn", "dataset.download=true"), ("cinic10", "datashare.ed.ac.uk"),
    ("imagenet", "image-net.org")])
def test_a_missing_data_set_says_where_it_looked_and_how_to_get_it(tmp_path, name, hint):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(dataset_cfg(name, tmp_path / "nowhere"), str(tmp_path))
    assert str(tmp_path / "nowhere") in str(err.value) and hint in str(err.value)


def test_class_count_mismatch_is_a_config_error(tmp_path):
    write_image_folder(tmp_path / "train", ["a", "b", "c"], 1)
    write_image_folder(tmp_path / "test", ["a", "b", "c"], 1)
    with pytest.raises(ConfigError, match="set dataset.num_classes=3"):
        load_dataset(dataset_cfg("cifar10", tmp_path), str(tmp_path / "cache"))


def test_random_crop_is_a_window_of_the_zero_padded_image_and_flip_mirrors():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, padding=2, hflip=True, generator=g)
    padded = torch.nn.functional.pad(images, (2,) * 4)
    for i in range(16):
        windows = [padded[i, :, y:y + 8, x:x + 8] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    assert not torch.equal(out, images)
    assert torch.equal(random_crop_flip(images, 0, False, g), images)


def test_device_loader_order_depends_on_seed_and_epoch_only():
    split = TensorSplit(torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8), torch.arange(64))
    loader = DeviceLoader(split, 16, torch.device("cpu"), seed=3, train=True, crop_padding=2,
                          hflip=True)
    first = [y.clone() for _, y in loader]
    again = [y.clone() for _, y in loader]
    loader.set_epoch(1)
    other = [y.clone() for _, y in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert sorted(torch.cat(first).tolist()) == list(range(64))
    images, _ = next(iter(loader))
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1


@pytest.mark.parametrize(("name", "cls"), [("cifar10", "CIFAR10"), ("svhn", "SVHN")])
def test_a_failed_download_is_one_line(tmp_path, monkeypatch, name, cls):
    """Issue 18, item 8: no network gives urllib's error in one line, not a traceback."""
    import urllib.error

    import torchvision.datasets

    def offline(*_, **__):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets, cls, offline)
    cfg = compose_config(f"dataset={name}", f"dataset.root={tmp_path}", "dataset.download=true")
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(cfg.dataset, cfg.cache_dir)
    assert str(err.value).startswith(f"{'CIFAR-10' if name == 'cifar10' else 'SVHN'}: the "
                                     f"download into {tmp_path} failed (<urlopen error")
    assert "\n" not in str(err.value)


# A data set with settings of its own (SVHN's `extra`) in every role a data set can have, each
# through a whole tiny run on the digits (the same ten classes) with SVHN's real .mat files.
SVHN_ROLES = {
    "training set": (["dataset=svhn", "dataset.root={svhn}", "dataset.extra=true",
                      "+eval.ood.far.synthetic=null"], "ood/synthetic/msp/auroc"),
    "eval.shift": (["dataset=digits", "+eval.shift.sets.svhn={svhn}"], "shift/svhn/acc"),
    "dataset.test_set": (["dataset=digits", "dataset.test_set=svhn", "dataset.root={svhn}"],
                         "test/acc"),
    "method.unlabelled": (["dataset=digits", "method=noisy_student", "method.rounds=1",
                           "method.unlabelled=svhn", "method.unlabelled_root={svhn}",
                           "method.labelled_fraction=1", "method.threshold=0",
                           "method.balance=false"],
                          "round1/pseudo_labelled"),
}


@pytest.mark.parametrize("role", SVHN_ROLES)
def test_a_data_set_with_settings_of_its_own_works_in_every_role(role, tmp_path):
    from kdrun.jobs import train

    write_svhn(tmp_path, {"train": 8, "test": 4, "extra": 5})
    overrides, key = SVHN_ROLES[role]
    cfg = compose_config(*(o.format(svhn=tmp_path) for o in overrides), "dataset.train_subset=64",
                         "trainer.batch_size=4", "teacher.batch_size=4", "teacher.epochs=1")
    results = train(cfg, tmp_path / "run")
    assert key in results
    if role == "dataset.test_set":  # SVHN's 4 test images evaluated the digits student
        assert results["test/acc"] % 25 == 0
    if role == "method.unlabelled":  # all 8 SVHN training images were pseudo-labelled
        assert results["round1/pseudo_labelled"] == 8


@pytest.mark.parametrize("role", ["eval.ood", "eval.shift", "dataset.test_set",
                                  "method.unlabelled"])
def test_a_pool_file_can_only_be_the_training_set_said_in_one_line(role, tmp_path):
    from kdrun.validate import validate

    overrides = {"eval.ood": ["+eval.ood.far.synthetic_pool=null"],
                 "eval.shift": ["+eval.shift.sets.synthetic_pool=null"],
                 "dataset.test_set": ["dataset.test_set=synthetic_pool"],
                 "method.unlabelled": ["method=noisy_student",
                                       "method.unlabelled=synthetic_pool"]}[role]
    cfg = compose_config("dataset=digits", *overrides)
    with pytest.raises(ConfigError, match=f"^{role}.*synthetic_pool can only be the training "
                                          "set"):
        if role == "method.unlabelled":
            from kdrun.jobs import train

            train(cfg, tmp_path)
        else:
            validate(cfg)


def test_the_evaluation_view_of_a_training_folder_reads_it_as_the_test_split():
    """Fitted OOD scores read the training images without the training crops and flips."""
    import torch

    from kdrun.data.augment import center_crop_transform, resized_crop_transform
    from kdrun.data.image_folder import ImageFiles
    from kdrun.data.types import evaluation_view, take

    train = ImageFiles([Path("a.png")], transform=resized_crop_transform(32, True))
    test = ImageFiles([Path("b.png")], transform=center_crop_transform(32))
    view = evaluation_view(take(train, torch.tensor([0])), take(test, torch.tensor([0])))
    assert view.dataset.transform is test.transform and view.indices == [0]
    assert train.transform is not test.transform  # the training split keeps its augmentation
