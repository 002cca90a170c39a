"""RandAugment against the official definitions (google-research/noisystudent, randaugment.py):
the magnitude scale, each op on fixed images, and the batch (each image its own draw)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from kdrun.data.randaugment import OPS, RandAugment, arguments


def pixels(*rows) -> torch.Tensor:
    """A 1 x 3 x H x W batch with every channel equal to `rows` (uint8 values as floats)."""
    return torch.tensor(rows, dtype=torch.float32).expand(1, 3, -1, -1).clone()


def op(name: str, x: torch.Tensor, argument: float, negative: bool = False,
       centre=(0, 0)) -> torch.Tensor:
    augment = RandAugment(1, 10)
    augment.arguments = {**augment.arguments, name: argument}
    return augment.op(x, name, torch.tensor(negative).view(1, 1, 1, 1),
                      torch.tensor([centre]))


def test_the_magnitude_is_level_over_ten_of_each_ops_range_and_may_exceed_it():
    """Issue 30, item 3: the official scale, not torchvision's M/30 of its bins."""
    at10, at27 = arguments(10, 40, 100), arguments(27, 40, 100)
    assert at10["Rotate"] == 30 and at27["Rotate"] == pytest.approx(81)
    assert at10["ShearX"] == pytest.approx(0.3) and at27["ShearY"] == pytest.approx(0.81)
    assert at10["TranslateX"] == 100 and at27["TranslateY"] == pytest.approx(270)
    assert at10["Color"] == pytest.approx(1.9) and at27["Sharpness"] == pytest.approx(4.96)
    assert (at10["Posterize"], at10["Solarize"], at10["SolarizeAdd"], at10["Cutout"]) == \
        (4, 256, 110, 40)
    assert arguments(5, 4, 4)["Cutout"] == 2 and arguments(5, 4, 4)["TranslateX"] == 2
    assert {"Invert", "Cutout", "SolarizeAdd"} <= set(OPS) and len(OPS) == 16


def test_the_pixel_ops_on_fixed_values():
    x = pixels([0, 100, 127, 200, 255])
    assert op("Invert", x, 0)[0, 0, 0].tolist() == [255, 155, 128, 55, 0]
    assert op("Solarize", x, 128)[0, 0, 0].tolist() == [0, 100, 127, 55, 0]
    assert op("SolarizeAdd", x, 50)[0, 0, 0].tolist() == [50, 150, 177, 200, 255]
    assert op("SolarizeAdd", x, 200)[0, 0, 0].tolist() == [200, 255, 255, 200, 255]
    assert op("Posterize", x, 2)[0, 0, 0].tolist() == [0, 64, 64, 192, 192]
    assert op("Posterize", x, 10)[0, 0, 0].tolist() == x[0, 0, 0].tolist()  # M 27: kept
    assert op("Posterize", x, 0)[0, 0, 0].tolist() == [0, 0, 0, 128, 128]  # TF: shift 7
    # blends truncate as tf.cast does: 0.5 * 127 = 63.5 -> 63; 1.9 * 200 clips to 255
    assert op("Brightness", x, 0.5)[0, 0, 0].tolist() == [0, 50, 63, 100, 127]
    assert op("Brightness", x, 1.9)[0, 0, 0].tolist() == [0, 190, 241, 255, 255]


def test_colour_and_contrast_blend_towards_the_official_degenerate_images():
    x = torch.tensor([200.0, 100.0, 50.0]).view(1, 3, 1, 1).expand(1, 3, 32, 32).clone()
    # tf.image.rgb_to_grayscale: (0.2989 R + 0.5870 G + 0.1140 B) / 255 * 255.5, truncated
    grey = int((0.2989 * 200 + 0.5870 * 100 + 0.1140 * 50) / 255 * 255.5)
    assert grey == 124
    assert op("Color", x, 0.0).unique().tolist() == [grey]
    assert op("Color", x, 1.0).equal(x)
    # the official Contrast's "mean" is the histogram's total over 256 bins: 32 * 32 / 256
    assert op("Contrast", x, 0.0).unique().tolist() == [4]
    assert op("Contrast", x, 0.5)[0, :, 0, 0].tolist() == [102, 52, 27]


def test_sharpness_blends_with_the_smoothed_image_whose_border_is_kept():
    x = torch.zeros(1, 3, 3, 3)
    x[..., 1, 1] = 130
    out = op("Sharpness", x, 2.0)
    # the SMOOTH kernel's centre weight 5/13: 50; 50 + 2 * (130 - 50) = 210; the border
    # pixels are their own smoothing, so any factor keeps them
    assert out[0, 0, 1, 1] == 210 and out[0, 0].sum() == 210


def test_autocontrast_stretches_each_channel_and_equalize_is_pils():
    x = pixels([50, 100, 150])
    assert op("AutoContrast", x, 0)[0, 0, 0].tolist() == [0, 127, 255]
    flat = pixels([7, 7, 7])
    assert op("AutoContrast", flat, 0).equal(flat)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 9, 11), generator=g).float()
    images[1] = (images[1] / 4).floor() + 60  # a narrow histogram
    images[2, 0] = 9  # a flat channel: step 0, kept
    out = op("Equalize", images, 0)
    for image, result in zip(images, out):
        pil = Image.fromarray(image.permute(1, 2, 0).byte().numpy())
        expected = torch.from_numpy(np.array(ImageOps.equalize(pil)))
        assert torch.equal(result.permute(1, 2, 0).byte(), expected)


def test_the_geometric_ops_move_pixels_as_tensorflows_transforms_and_fill_grey():
    x = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4).expand(1, 3, 3, 4).clone()
    # translate_x(image, pixels): output column c is input column c + pixels
    moved = op("TranslateX", x, 2.0)[0, 0]
    assert moved.tolist() == [[2, 3, 128, 128], [6, 7, 128, 128], [10, 11, 128, 128]]
    assert op("TranslateX", x, 2.0, negative=True)[0, 0, 0].tolist() == [128, 128, 0, 1]
    assert op("TranslateY", x, 1.0)[0, 0].tolist() == [[4, 5, 6, 7], [8, 9, 10, 11],
                                                       [128] * 4]
    # shear_x: output (x, y) samples input (x + level * y, y)
    assert op("ShearX", x, 1.0)[0, 0].tolist() == [[0, 1, 2, 3], [5, 6, 7, 128],
                                                   [10, 11, 128, 128]]
    # rotate by 90 degrees counterclockwise about the centre of a square image
    square = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3).expand(1, 3, 3, 3)
    assert op("Rotate", square, 90.0)[0, 0].tolist() == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]
    assert op("Rotate", square, 90.0, negative=True)[0, 0].tolist() == \
        [[6, 3, 0], [7, 4, 1], [8, 5, 2]]


def test_cutout_greys_a_square_of_twice_the_pad_around_its_centre_cut_by_the_border():
    x = torch.zeros(1, 3, 8, 8)
    inside = op("Cutout", x, 2, centre=(4, 4))
    assert (inside == 128).sum() == 3 * 16 and inside[0, 0, 2:6, 2:6].eq(128).all()
    corner = op("Cutout", x, 2, centre=(0, 0))
    assert (corner == 128).sum() == 3 * 4 and corner[0, 0, :2, :2].eq(128).all()


def test_each_image_draws_its_own_op_and_the_batch_matches_the_ops_one_by_one():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (128, 3, 12, 12), generator=g, dtype=torch.uint8)
    augment = RandAugment(num_ops=1, magnitude=9, cutout_const=4, translate_const=4)
    out = augment(images, generator=g)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    used = set()
    for image, result in zip(images.float(), out.float()):
        image = image.unsqueeze(0)
        matches = [name for name in OPS if name != "Cutout" for negative in (False, True)
                   if torch.equal(augment.op(image, name, torch.tensor(negative).view(
                       1, 1, 1, 1), torch.zeros(1, 2, dtype=torch.long))[0], result)]
        changed = result != image[0]
        if not matches:  # Cutout: the only change is a grey square
            assert changed.any() and result[changed].eq(128).all()
            matches = ["Cutout"]
        used.add(matches[0])
    assert len(used) >= 12  # 16 ops: the images drew many


def test_n_ops_compose_and_a_float_batch_stays_float_in_range():
    images = torch.rand(16, 3, 8, 8)
    torch.manual_seed(0)
    out = RandAugment(num_ops=2, magnitude=27)(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal((out * 255).round(), out * 255)  # uint8 levels
    torch.manual_seed(0)
    assert torch.equal(RandAugment(num_ops=2, magnitude=27)(images), out)  # seeded
    assert not torch.equal(RandAugment(num_ops=2, magnitude=27)(images), out)  # fresh draws
    single = RandAugment(2, 9)(torch.zeros(3, 8, 8, dtype=torch.uint8))
    assert single.shape == (3, 8, 8) and single.dtype == torch.uint8  # a DataLoader transform


def test_small_images_get_the_official_32_pixel_cutout_after_randaugment():
    augment = RandAugment(num_ops=0, magnitude=5, cutout_const=4, translate_const=4,
                          cutout_after=8)
    out = augment(torch.zeros(64, 3, 32, 32, dtype=torch.uint8),
                  generator=torch.Generator().manual_seed(0))
    greyed = (out[:, 0] == 128).flatten(1).sum(dim=1)
    assert greyed.max() == 16 * 16 and (greyed > 0).all()  # a 16-pixel square, cut by borders


def test_each_op_on_its_own_images_gives_what_every_op_on_every_image_gives():
    """The CPU's grouped path and the device path (capturable) agree, draw for draw."""
    images = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8).float()
    augment = RandAugment(num_ops=2, magnitude=9, cutout_const=4, translate_const=4,
                          cutout_after=3)
    out = {grouped: augment.apply(images, torch.Generator().manual_seed(3), grouped=grouped)
           for grouped in (False, True)}
    assert torch.equal(out[False], out[True]) and not torch.equal(out[True], images)
