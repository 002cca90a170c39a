"""The GA baseline of Noise as a Resource."""

from __future__ import annotations

from kdrun.methods.input_noise import GaussianInputNoise, NoiseSettings
from kdrun.methods.vanilla import Vanilla


class GaussianAug(GaussianInputNoise, Vanilla):
    """Gaussian augmentation, the baseline of *Noise as a Resource for Learning in Knowledge
    Distillation* (Arani, Sarfraz, Zonooz; arXiv 1910.05057): the student alone, trained with
    cross-entropy on inputs with additive noise N(0, sigma^2); no teacher."""

    Settings = NoiseSettings
