"""Mahalanobis distance on the penultimate features (Lee et al., NeurIPS 2018, arXiv
1807.03888): class means and one shared covariance fitted on the training set; the score is
the negative distance to the closest class mean, -min_c (z - mu_c)^T Sigma^-1 (z - mu_c). As
OpenOOD's MDS: the last features only, without the paper's input perturbation or its
logistic-regression ensemble of layers. The covariance is the maximum-likelihood one (divided
by N) and inverted as a pseudo-inverse, as scikit-learn's EmpiricalCovariance that OpenOOD
uses."""

from __future__ import annotations

import torch

from kdrun.evaluation.scores.base import Score


class Mahalanobis(Score):
    label = "Mahalanobis"
    fitted = True

    def fit(self, train, model):
        z, y = train.features.double(), train.labels
        classes = int(y.max()) + 1
        self.means = torch.stack([z[y == c].mean(dim=0) for c in range(classes)])
        centred = z - self.means[y]
        covariance = centred.T @ centred / len(z)
        self.precision = torch.linalg.pinv(covariance, hermitian=True)

    def score(self, batch):
        z = batch.features.double()
        diff = z[:, None, :] - self.means[None]  # N x C x D
        distance = torch.einsum("ncd,de,nce->nc", diff, self.precision, diff)
        return (-distance.min(dim=1).values).float()
