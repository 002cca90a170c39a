"""Gaussian noise on the student's input, shared by the GA baseline and Soft Randomization."""

from __future__ import annotations

import torch

from kdrun.data.noise import NOISE_SPACES, gaussian_noise
from kdrun.errors import require


class GaussianInputNoise:
    """The student sees x + N(0, sigma^2): in pixel space [0, 1] (`noise_space=pixel`, before
    the model's normalisation) or in the normalised space the network sees (`normalized`)."""

    sigma: float
    noise_space: str

    @classmethod
    def check_settings(cls, settings) -> None:
        require(settings.noise_space in NOISE_SPACES, "method.noise_space", settings.noise_space,
                f"choose one of {', '.join(NOISE_SPACES)}")
        require(settings.sigma >= 0, "sigma", settings.sigma, "the noise std must be >= 0")

    def student_input(self, images: torch.Tensor) -> torch.Tensor:
        return gaussian_noise(images, self.sigma, self.noise_space, self.student.std)
