"""Batched image augmentation on the training device: every image of a batch gets its own
random draw, with no per-image Python (torchvision's batch transforms share one draw per
batch)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale uses them
_LUMA = (0.299, 0.587, 0.114)


def random_crop_flip(images: torch.Tensor, padding: int, hflip: bool,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop after zero padding, and random horizontal flip (any dtype)."""
    n, c, h, w = images.shape
    device = images.device
    if padding:
        padded = F.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(n, device=device)[:, None, None, None]
        chans = torch.arange(c, device=device)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if hflip:
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


def color_jitter(images: torch.Tensor, brightness: float, contrast: float, saturation: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors drawn from [1 - s, 1 + s], applied
    as torchvision's ColorJitter defines them, on float images in [0, 1]."""
    n = images.shape[0]

    def factors(strength: float) -> torch.Tensor:
        u = torch.rand(n, 1, 1, 1, generator=generator, device=images.device)
        return 1 + strength * (2 * u - 1)

    def gray(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            return x.mean(dim=1, keepdim=True)
        r, g, b = x.unbind(dim=1)  # weights as numbers: no host-to-device copy to capture
        return (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]).unsqueeze(1)

    if brightness:
        images = (images * factors(brightness)).clamp(0, 1)
    if contrast:
        mean = gray(images).mean(dim=(1, 2, 3), keepdim=True)
        images = (mean + factors(contrast) * (images - mean)).clamp(0, 1)
    if saturation:
        g = gray(images)
        images = (g + factors(saturation) * (images - g)).clamp(0, 1)
    return images


def resized_crop_transform(size: int, hflip: bool,
                           randaugment: tuple[int, int] | None = None) -> v2.Compose:
    """Large images, one at a time in DataLoader workers: a random resized crop and flip (and
    RandAugment N, M on the crop, for a noised student), as float in [0, 1]."""
    steps = [v2.RandomResizedCrop(size, antialias=True)]
    steps += [v2.RandomHorizontalFlip()] if hflip else []
    steps += [v2.ToImage()]
    steps += [v2.RandAugment(*randaugment)] if randaugment else []
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True)])


def center_crop_transform(size: int) -> v2.Compose:
    """Large images for evaluation: resized so the centre crop keeps 87.5 % of the side."""
    return v2.Compose([v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


class RandAugment:
    """RandAugment N, M (Cubuk et al., arXiv 1909.13719) for a whole batch on its device: each
    image draws its own N operations and signs, as torchvision's RandAugment draws them for one
    image, and each operation is torchvision's own at the magnitude M fixes (its functional
    ops on the batch; the geometric ones as a gather through an index map made once by
    applying torchvision's op to an image of pixel indices; Sharpness with its kernel made
    once). No per-image or per-batch host work, no host sync and no host-to-device copy, so a
    CUDA graph can capture it. Works like torchvision on uint8
    levels: float images are quantised on the way."""

    def __init__(self, num_ops: int, magnitude: int, num_bins: int = 31):
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.num_bins = num_bins
        self.torchvision = v2.RandAugment(num_ops, magnitude, num_bins)
        self.names = list(self.torchvision._AUGMENTATION_SPACE)
        self.constants: dict[tuple, torch.Tensor] = {}  # index maps and the sharpness kernel

    @functools.cache  # noqa: B019  (a handful of (op, size) keys per instance)
    def magnitudes(self, name: str, height: int, width: int) -> tuple[float, ...]:
        """The op's magnitude, and its negative when the op is signed ((0.0,) without one);
        torchvision builds its table afresh on every call, so it is kept."""
        values, signed = self.torchvision._AUGMENTATION_SPACE[name]
        table = values(self.num_bins, height, width)
        if table is None:
            return (0.0,)
        value = float(table[self.magnitude])
        return (value, -value) if signed else (value,)

    def op(self, images: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
        """torchvision's op on a uint8 batch (geometric ops through a cached index map)."""
        n, c, h, w = images.shape
        if name == "Sharpness":
            return self.sharpness(images, 1.0 + magnitude)
        if name not in GEOMETRIC:
            return self.torchvision._apply_image_or_video_transform(
                images, name, magnitude, interpolation=self.torchvision.interpolation,
                fill=self.torchvision._fill)
        key = (name, magnitude, h, w, images.device)
        if key not in self.constants:
            where = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w)
            moved = self.torchvision._apply_image_or_video_transform(
                where, name, magnitude, interpolation=self.torchvision.interpolation,
                fill=self.torchvision._fill)
            self.constants[key] = (moved.view(h * w).round().long() - 1).to(images.device)
        source = self.constants[key]  # -1: outside the image, filled with 0
        flat = images.reshape(n, c, h * w)[:, :, source.clamp(min=0)]
        return (flat * (source >= 0)).view(n, c, h, w)

    def sharpness(self, images: torch.Tensor, factor: float) -> torch.Tensor:
        """torchvision's adjust_sharpness on uint8 images, step for step, with its 3x3 blur
        kernel (1 around a 5, over 13) made once per device instead of on every call."""
        c, h, w = images.shape[1:]
        if h <= 2 or w <= 2:
            return images
        key = ("sharpness", images.device)
        if key not in self.constants:
            kernel = torch.full((3, 3), 1 / 13)
            kernel[1, 1] = 5 / 13
            self.constants[key] = kernel.to(images.device)
        output = images.to(torch.float32, copy=True)
        blurred = F.conv2d(output, self.constants[key].expand(c, 1, 3, 3), groups=c).round_()
        inner = output[..., 1:-1, 1:-1]
        inner.add_(blurred.sub_(inner), alpha=1.0 - factor)
        return output.clamp_(0, 255).to(images.dtype)

    def __call__(self, images: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = images.shape
        x = (images * 255).round().to(torch.uint8)
        for _ in range(self.num_ops):
            chosen = torch.randint(len(self.names), (n, 1, 1, 1), generator=generator,
                                   device=images.device)
            negative = torch.rand(n, 1, 1, 1, generator=generator, device=images.device) <= 0.5
            out = x
            for k, name in enumerate(self.names):
                if name == "Identity":
                    continue
                variants = [self.op(x, name, m) for m in self.magnitudes(name, h, w)]
                result = variants[0] if len(variants) == 1 else torch.where(
                    negative, variants[1], variants[0])
                out = torch.where(chosen == k, result, out)
            x = out
        return x.float() / 255


GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
