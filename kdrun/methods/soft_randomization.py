"""Soft Randomization, from Noise as a Resource."""

from __future__ import annotations

from dataclasses import dataclass

from kdrun.methods.input_noise import GaussianInputNoise, NoiseSettings
from kdrun.methods.kd import KD, KDSettings


@dataclass
class SoftRandomizationSettings(NoiseSettings, KDSettings):
    pass


class SoftRandomization(GaussianInputNoise, KD):
    """Soft Randomization (Arani, Sarfraz, Zonooz; arXiv 1910.05057): the teacher sees the
    clean input x, the student x + N(0, sigma^2); loss = (1 - alpha) * CE(S(x + d), y)
    + alpha * T^2 * KL(T_T(x) || S_T(x + d)). Trains compact models that resist noise and
    adversarial perturbations."""

    Settings = SoftRandomizationSettings
