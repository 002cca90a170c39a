"""Soft Randomization, from Noise as a Resource."""

from __future__ import annotations

from kdrun.methods.base import METHODS
from kdrun.methods.input_noise import GaussianInputNoise
from kdrun.methods.kd import KD


@METHODS.register("soft_randomization")
class SoftRandomization(GaussianInputNoise, KD):
    """Soft Randomization (Arani, Sarfraz, Zonooz; arXiv 1910.05057): the teacher sees the
    clean input x, the student x + N(0, sigma^2); loss = (1 - alpha) * CE(S(x + d), y)
    + alpha * T^2 * KL(T_T(x) || S_T(x + d)). Trains compact models that resist noise and
    adversarial perturbations."""

    def __init__(self, student, teacher, alpha: float, T: float, sigma: float, noise_space: str):
        super().__init__(student, teacher, alpha, T)
        self.sigma = sigma
        self.noise_space = noise_space
