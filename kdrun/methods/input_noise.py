"""Gaussian noise on the student's input, shared by the GA baseline and Soft Randomization."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.data.noise import NOISE_SPACES, gaussian_noise
from kdrun.methods.base import MethodSettings

DEFAULT_SIGMA = 0.2  # pixel units: `kdrun method=soft_randomization sigma=0.2`, the setting
                     # we quote for the paper (its own grid is unverified)


@dataclass
class NoiseSettings(MethodSettings):
    sigma: float | None = MISSING  # noise std; None: DEFAULT_SIGMA
    noise_space: str = MISSING  # pixel | normalized

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sigma is None:  # a noise method named without a sigma still gets noise
            self.sigma = DEFAULT_SIGMA
        require(self.noise_space in NOISE_SPACES, "method.noise_space", self.noise_space,
                f"choose one of {', '.join(NOISE_SPACES)}")
        require(self.sigma >= 0, "method.sigma", self.sigma, "the noise std must be >= 0")


class GaussianInputNoise:
    """The student sees x + N(0, sigma^2): in pixel space [0, 1] (`noise_space=pixel`, before
    the model's normalisation) or in the normalised space the network sees (`normalized`)."""

    def student_input(self, images: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return gaussian_noise(images, s.sigma, s.noise_space, self.student.std)
