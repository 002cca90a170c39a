"""Loss terms shared by several methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    T: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch (Hinton et al., 2015);
    the T^2 keeps gradient magnitudes comparable across temperatures."""
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (T * T)


def linear_mmd(features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
    """Empirical MMD with a linear kernel: the squared distance between the batch means."""
    return (features_a.mean(dim=0) - features_b.mean(dim=0)).pow(2).sum()


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Logit standardisation (Sun et al., CVPR 2024, arXiv 2403.01427): each row z-scored over
    the classes, (z - mean) / (1e-7 + std), the std unbiased, as their official code
    (sunshangquan/logit-standardization-KD, distillers/KD.py `normalize`)."""
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (1e-7 + z.std(dim=1, keepdim=True))
