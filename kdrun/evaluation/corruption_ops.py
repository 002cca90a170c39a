"""Common corruptions generated on the fly (Hendrycks & Dietterich, arXiv 1903.12261), with
the CIFAR-10-C severity parameters of its generator (hendrycks/robustness,
ImageNet-C/create_c/make_cifar_c.py). Images are float batches in [0, 1], N x 3 x H x W; all
randomness comes from the given generator, so a seed fixes every corrupted image."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SEVERITY = {  # CIFAR-10-C's parameters, severities 1..5
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
}


def gaussian_noise(x, c, g):
    return x + torch.randn(x.shape, generator=g, device=x.device) * c


def shot_noise(x, c, g):
    return torch.poisson(x * c, generator=g) / c


def impulse_noise(x, c, g):
    """Salt and pepper: a share c of the values set to 0 or 1, half each."""
    hit = torch.rand(x.shape, generator=g, device=x.device) < c
    salt = torch.rand(x.shape, generator=g, device=x.device) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def _disk_kernel(radius: float, alias_blur: float, device) -> torch.Tensor:
    """An aliased disk on a 17 x 17 grid, normalised, then smoothed by a 3 x 3 Gaussian."""
    span = torch.arange(-8, 9, device=device, dtype=torch.float32)
    disk = ((span[:, None] ** 2 + span[None, :] ** 2) <= radius ** 2).float()
    disk = disk / disk.sum()
    taps = torch.exp(-torch.tensor([-1.0, 0.0, 1.0], device=device) ** 2 / (2 * alias_blur ** 2))
    taps = taps / taps.sum()
    smoothed = F.pad(disk[None, None], (1, 1, 1, 1), mode="reflect")
    smoothed = F.conv2d(smoothed, taps.view(1, 1, 1, 3))
    return F.conv2d(smoothed, taps.view(1, 1, 3, 1))[0, 0]


def defocus_blur(x, c, g):
    kernel = _disk_kernel(c[0], c[1], x.device)
    k = kernel.shape[0] // 2
    padded = F.pad(x, (k, k, k, k), mode="reflect")
    return F.conv2d(padded, kernel.expand(x.shape[1], 1, -1, -1), groups=x.shape[1])


def motion_blur(x, c, g):
    """A one-sided Gaussian-weighted line blur (ImageMagick's motion blur, which CIFAR-10-C
    calls through Wand), radius c[0], sigma c[1], at a random angle in [-45, 45] degrees."""
    radius, sigma = c
    n = x.shape[0]
    angle = (torch.rand(n, generator=g, device=x.device) * 90 - 45) * math.pi / 180
    steps = torch.arange(radius + 1, device=x.device, dtype=torch.float32)
    weights = torch.exp(-steps ** 2 / (2 * sigma ** 2))
    weights = weights / weights.sum()
    h, w = x.shape[-2:]
    base = F.affine_grid(torch.eye(2, 3, device=x.device).expand(n, 2, 3), list(x.shape),
                         align_corners=False)
    out = torch.zeros_like(x)
    for step, weight in zip(steps, weights):
        shift = torch.stack([step * torch.cos(angle) * 2 / w, step * torch.sin(angle) * 2 / h], 1)
        grid = base + shift.view(n, 1, 1, 2)
        out += weight * F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                      align_corners=False)
    return out


def contrast(x, c, g):
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * c + means


def brightness(x, c, g):
    """V (of HSV) raised by c, hue and saturation kept: RGB scales by V'/V."""
    value = x.max(dim=1, keepdim=True).values
    raised = (value + c).clamp(max=1)
    return torch.where(value > 0, x * raised / value.clamp_min(1e-12), raised.expand_as(x))


def _per_image(x, transform):
    """Through Pillow image by image (JPEG and box resampling as CIFAR-10-C does them)."""
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([np.asarray(transform(Image.fromarray(image)).convert("RGB"))
                    for image in images])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255


def jpeg_compression(x, c, g):
    def compress(image):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=c)
        return Image.open(buffer)

    return _per_image(x, compress)


def pixelate(x, c, g):
    h, w = x.shape[-2:]
    return _per_image(x, lambda image: image.resize((int(w * c), int(h * c)), Image.BOX)
                      .resize((w, h), Image.BOX))


CORRUPTIONS = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "motion_blur": motion_blur, "contrast": contrast,
    "brightness": brightness, "jpeg_compression": jpeg_compression, "pixelate": pixelate,
}


def corrupt(images: torch.Tensor, name: str, severity: int,
            generator: torch.Generator) -> torch.Tensor:
    """`images` under corruption `name` at severity 1..5, in [0, 1]; its randomness drawn
    from `generator` (on the images' device)."""
    out = CORRUPTIONS[name](images, SEVERITY[name][severity - 1], generator)
    return out.clamp(0, 1)
