"""Batched image augmentation on the training device: every image of a batch gets its own
random draw, with no per-image Python (torchvision's batch transforms share one draw per
batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from kdrun.data.randaugment import RandAugment

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
                           randaugment: RandAugment | None = None) -> v2.Compose:
    """Large images, one at a time in DataLoader workers: a random resized crop and flip (and
    `randaugment`, a RandAugment, on the uint8 crop, for a noised student), as float in
    [0, 1]."""
    steps = [v2.RandomResizedCrop(size, antialias=True)]
    steps += [v2.RandomHorizontalFlip()] if hflip else []
    steps += [v2.ToImage()]
    steps += [randaugment] if randaugment else []
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True)])


def center_crop_transform(size: int) -> v2.Compose:
    """Large images for evaluation: resized so the centre crop keeps 87.5 % of the side."""
    return v2.Compose([v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
