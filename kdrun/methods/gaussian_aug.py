"""The GA baseline of Noise as a Resource."""

from __future__ import annotations

from kdrun.methods.base import METHODS
from kdrun.methods.input_noise import GaussianInputNoise
from kdrun.methods.vanilla import Vanilla


@METHODS.register("gaussian_aug")
class GaussianAug(GaussianInputNoise, Vanilla):
    """Gaussian augmentation, the baseline of *Noise as a Resource for Learning in Knowledge
    Distillation* (Arani, Sarfraz, Zonooz; arXiv 1910.05057): the student alone, trained with
    cross-entropy on inputs with additive noise N(0, sigma^2); no teacher."""

    def __init__(self, student, sigma: float, noise_space: str):
        super().__init__(student)
        self.sigma = sigma
        self.noise_space = noise_space
