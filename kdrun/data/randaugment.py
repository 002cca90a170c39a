"""RandAugment as Noisy Student's official code defines it (google-research/noisystudent,
randaugment.py, after Cubuk et al., arXiv 1909.13719), for a whole batch on its device.

Its 16 operations, its magnitude scale (an op's argument at level M is M/10 of the argument at
level 10, and levels above 10 are allowed: the paper's M=27 is 2.7 times that) and its
arithmetic (uint8 values, float blends truncated, geometric ops sampled nearest-neighbour and
filled with grey 128) are the official ones, quirks included: Posterize keeps more bits and
Solarize a higher threshold as M grows, and Contrast blends towards H*W/256 rather than the
mean grey. Each image draws its own N ops, signs and Cutout centres. On a GPU every op is
computed for the whole batch and each image keeps its own draw's result, with no host work or
sync after the first call, so a CUDA graph can capture it; on the CPU each op runs on the images
that drew it. Index maps of the geometric ops are made once."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LEVEL = 10.0  # the level at which each op reaches its named argument
GREY = 128.0  # what the geometric ops and Cutout fill with (the official replace value)
OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
       "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
       "SolarizeAdd", "Cutout")  # the official list, Cutout included (its cutout_op flag)
SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")  # negated half the time


def arguments(level: float, cutout_const: int, translate_const: int) -> dict[str, float]:
    """Each op's argument at `level` (the official level_to_arg); ops without one: 0."""
    scale = level / MAX_LEVEL
    return {"AutoContrast": 0, "Equalize": 0, "Invert": 0,
            "Rotate": scale * 30.0,  # degrees
            "Posterize": int(scale * 4),  # bits kept
            "Solarize": int(scale * 256),  # threshold
            "SolarizeAdd": int(scale * 110),  # added below 128
            "Color": scale * 1.8 + 0.1, "Contrast": scale * 1.8 + 0.1,  # blend factors
            "Brightness": scale * 1.8 + 0.1, "Sharpness": scale * 1.8 + 0.1,
            "ShearX": scale * 0.3, "ShearY": scale * 0.3,
            "TranslateX": scale * translate_const, "TranslateY": scale * translate_const,
            "Cutout": int(scale * cutout_const)}  # half the side of the square


def blend(degenerate: torch.Tensor, image: torch.Tensor, factor: float) -> torch.Tensor:
    """degenerate + factor * (image - degenerate), clipped to [0, 255] and truncated as
    tf.cast to uint8 truncates."""
    return (degenerate + factor * (image - degenerate)).clamp(0, 255).floor()


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """tf.image.rgb_to_grayscale on uint8: ITU-R 601 weights on [0, 1] values, back to uint8 by
    tf.image.convert_image_dtype (x 255.5, truncated). N x 1 x H x W."""
    if x.shape[1] == 1:
        return x
    grey = (0.2989 * x[:, 0:1] + 0.5870 * x[:, 1:2] + 0.1140 * x[:, 2:3]) / 255
    return (grey * 255.5).floor().clamp(0, 255)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Each channel stretched so its lowest value is 0 and its highest 255 (unless flat)."""
    low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    scale = 255.0 / (high - low).clamp_min(1)
    stretched = (x * scale - low * scale).clamp(0, 255).floor()
    return torch.where(high > low, stretched, x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's Equalize per channel, as the official code builds its lookup table: step =
    (pixels - count of the top value) // 255, lut = (cumsum + step // 2) // step shifted by
    one; a channel whose step is 0 is left as it is."""
    n, c, h, w = x.shape
    values = x.long().view(n, c, h * w)
    histogram = torch.zeros(n, c, 256, dtype=torch.long, device=x.device).scatter_add_(
        2, values, torch.ones_like(values))
    top = histogram.gather(2, values.amax(dim=2, keepdim=True))
    step = (h * w - top) // 255
    lut = (histogram.cumsum(dim=2) + step // 2) // step.clamp_min(1)
    lut = torch.cat([torch.zeros_like(lut[:, :, :1]), lut[:, :, :-1]], dim=2).clamp(0, 255)
    equalized = lut.gather(2, values).view(n, c, h, w).to(x.dtype)
    return torch.where(step.view(n, c, 1, 1) == 0, x, equalized)


def sharpness(x: torch.Tensor, factor: float, kernel: torch.Tensor) -> torch.Tensor:
    """Blend towards PIL's SMOOTH filter (3x3, 1 around a 5, over 13; the border pixels
    keep their values), truncated to uint8 before the blend."""
    c = x.shape[1]
    smoothed = F.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c).clamp(0, 255).floor()
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smoothed
    return blend(degenerate, x, factor)


def smooth_kernel(device: torch.device) -> torch.Tensor:
    """PIL's SMOOTH filter: 1 around a 5, over 13."""
    kernel = torch.ones(3, 3, device=device)
    kernel[1, 1] = 5
    return kernel / 13


def posterize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the top `bits` bits, with the shift 8 - bits clamped to [0, 7] as TensorFlow's
    bitwise shifts clamp it: 0 bits (levels below 2.5) keep the top bit, more than 8 (levels of
    22.5 and up) keep the image."""
    shift = 2.0 ** min(max(8 - bits, 0), 7)
    return (x / shift).floor() * shift


def projective_source(h: int, w: int, matrix: tuple[float, ...]) -> torch.Tensor:
    """For each output pixel (row-major), the flat index of the input pixel that
    tf.contrib.image.transform samples (nearest, rounded half away from zero) under the
    transform [a0, a1, a2, b0, b1, b2]: input (x', y') = (a0 x + a1 y + a2, b0 x + b1 y + b2);
    -1 where it falls outside the image (filled with grey)."""
    a0, a1, a2, b0, b1, b2 = matrix
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                          torch.arange(w, dtype=torch.float64), indexing="ij")

    def nearest(v: torch.Tensor) -> torch.Tensor:
        return (torch.sign(v) * torch.floor(v.abs() + 0.5)).long()

    source_x, source_y = nearest(a0 * x + a1 * y + a2), nearest(b0 * x + b1 * y + b2)
    inside = (source_x >= 0) & (source_x < w) & (source_y >= 0) & (source_y < h)
    return torch.where(inside, source_y * w + source_x, -1).flatten()


def geometric_matrix(name: str, argument: float, h: int, w: int) -> tuple[float, ...]:
    """The official op's projective transform (output pixel -> input pixel)."""
    if name == "ShearX":
        return 1.0, argument, 0.0, 0.0, 1.0, 0.0
    if name == "ShearY":
        return 1.0, 0.0, 0.0, argument, 1.0, 0.0
    if name == "TranslateX":  # translate(image, [-pixels, 0])
        return 1.0, 0.0, argument, 0.0, 1.0, 0.0
    if name == "TranslateY":
        return 1.0, 0.0, 0.0, 0.0, 1.0, argument
    radians = math.radians(argument)  # Rotate: tf.contrib.image.rotate, about the centre
    cos, sin = math.cos(radians), math.sin(radians)
    x_offset = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2
    y_offset = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2
    return cos, -sin, x_offset, sin, cos, y_offset


def cutout(x: torch.Tensor, pad: int, centres: torch.Tensor) -> torch.Tensor:
    """Each image's square of side up to 2 * pad around its centre (row, column), cut by the
    image's border, filled with grey."""
    if pad <= 0:
        return x
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    columns = torch.arange(w, device=x.device).view(1, 1, w)
    row, column = centres[:, 0].view(-1, 1, 1), centres[:, 1].view(-1, 1, 1)
    inside = ((rows >= row - pad) & (rows < row + pad)
              & (columns >= column - pad) & (columns < column + pad))
    return torch.where(inside.unsqueeze(1), GREY, x)


class RandAugment:
    """N ops of the official list per image at level `magnitude`. `cutout_const` and
    `translate_const`: the pixels Cutout's half-side and a translation reach at level 10 (the
    official defaults, 40 and 100, are for ImageNet; its 32-pixel preprocessing uses
    image_size // 8 for both); `cutout_after`: the half-side of one more Cutout applied to every
    image afterwards (the official 32-pixel preprocessing: image_size // 4; 0: none). Takes a
    float batch in [0, 1] (returned as float), or uint8 images, one or a batch (returned as
    uint8), so it also serves as a per-image DataLoader transform."""

    def __init__(self, num_ops: int, magnitude: float, cutout_const: int = 40,
                 translate_const: int = 100, cutout_after: int = 0):
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.arguments = arguments(magnitude, cutout_const, translate_const)
        self.cutout_after = cutout_after
        self.constants: dict[tuple, torch.Tensor] = {}  # index maps and the sharpness kernel

    def __call__(self, images: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        with torch.autocast(images.device.type, enabled=False):  # exact uint8 arithmetic
            if images.dtype == torch.uint8:
                out = self.apply(batch.float(), generator).to(torch.uint8)
            else:
                out = self.apply((batch.float() * 255).round(), generator) / 255
        return out.squeeze(0) if single else out

    def apply(self, x: torch.Tensor, generator: torch.Generator | None,
              grouped: bool | None = None) -> torch.Tensor:
        """RandAugment on uint8 values held as floats (N x C x H x W); `grouped`: each op on
        the images that drew it (None: on the CPU) rather than every op on every image."""
        n = x.shape[0]
        grouped = x.device.type == "cpu" if grouped is None else grouped
        for _ in range(self.num_ops):
            chosen = torch.randint(len(OPS), (n, 1, 1, 1), generator=generator,
                                   device=x.device)
            negative = torch.rand(n, 1, 1, 1, generator=generator, device=x.device) < 0.5
            centres = self.centres(x, generator)
            if grouped:  # the host may look: each op on its own images only
                x = self.grouped(x, chosen.view(n), negative, centres)
                continue
            out = x
            for k, name in enumerate(OPS):
                out = torch.where(chosen == k, self.op(x, name, negative, centres), out)
            x = out
        if self.cutout_after:
            x = cutout(x, self.cutout_after, self.centres(x, generator))
        return x

    def grouped(self, x: torch.Tensor, chosen: torch.Tensor, negative: torch.Tensor,
                centres: torch.Tensor) -> torch.Tensor:
        """The same result, each op computed on the images that drew it (on the CPU, where
        computing all 16 for every image would cost 16 times as much)."""
        out = x.clone()
        for k in chosen.unique().tolist():
            index = (chosen == k).nonzero().squeeze(1)
            out[index] = self.op(x[index], OPS[k], negative[index], centres[index])
        return out

    def centres(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A Cutout centre per image, uniform over its pixels (row, column)."""
        h, w = x.shape[-2:]
        u = torch.rand(x.shape[0], 2, generator=generator, device=x.device)
        return torch.stack([u[:, 0] * h, u[:, 1] * w], dim=1).long()

    def op(self, x: torch.Tensor, name: str, negative: torch.Tensor,
           centres: torch.Tensor) -> torch.Tensor:
        """The official op `name` on every image (signed ops: negated where `negative`)."""
        argument = self.arguments[name]
        if name in SIGNED:
            return torch.where(negative, self.geometric(x, name, -argument),
                               self.geometric(x, name, argument))
        if name == "AutoContrast":
            return autocontrast(x)
        if name == "Equalize":
            return equalize(x)
        if name == "Invert":
            return 255 - x
        if name == "Posterize":
            return posterize(x, argument)
        if name == "Solarize":
            return torch.where(x < argument, x, 255 - x)
        if name == "SolarizeAdd":
            return torch.where(x < 128, (x + argument).clamp(0, 255), x)
        if name == "Color":
            return blend(grayscale(x).expand_as(x), x, argument)
        if name == "Contrast":  # the official mean: the histogram's total over 256 bins
            grey = min(max(x.shape[-2] * x.shape[-1] / 256.0, 0.0), 255.0)
            return blend(torch.full_like(x, math.floor(grey)), x, argument)
        if name == "Brightness":
            return blend(torch.zeros_like(x), x, argument)
        if name == "Sharpness":
            return sharpness(x, argument, self.constant(("kernel", x.device),
                                                        lambda: smooth_kernel(x.device)))
        return cutout(x, argument, centres)

    def geometric(self, x: torch.Tensor, name: str, argument: float) -> torch.Tensor:
        """A geometric op through its index map (made once per op, sign, size and device)."""
        n, c, h, w = x.shape
        source = self.constant((name, argument, h, w, x.device), lambda: projective_source(
            h, w, geometric_matrix(name, argument, h, w)).to(x.device))
        moved = x.reshape(n, c, h * w)[:, :, source.clamp(min=0)]
        return torch.where(source >= 0, moved, GREY).view(n, c, h, w)

    def constant(self, key: tuple, make) -> torch.Tensor:
        if key not in self.constants:
            self.constants[key] = make()
        return self.constants[key]
