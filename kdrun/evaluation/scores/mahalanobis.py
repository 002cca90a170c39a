"""Mahalanobis distance on the penultimate features (Lee et al., NeurIPS 2018, arXiv
1807.03888): class means and one shared covariance fitted on the training set; the score is
the negative distance to the closest class mean, -min_c (z - mu_c)^T Sigma^-1 (z - mu_c). As
OpenOOD's MDS: the last features only, without the paper's input perturbation or its
logistic-regression ensemble of layers. The covariance is the maximum-likelihood one (divided
by N) and inverted as a pseudo-inverse, as scikit-learn's EmpiricalCovariance that OpenOOD
uses. Scored in chunks as z'Pz - 2 z'P mu_c + mu_c'P mu_c, so memory grows with the classes,
not classes x feature width."""

from __future__ import annotations

import logging

import torch

from kdrun.evaluation.scores.base import Score

log = logging.getLogger(__name__)
QUERY_CHUNK = 4096


class Mahalanobis(Score):
    label = "Mahalanobis"
    fitted = True

    def fit(self, train, model):
        z, y = train.features.double(), train.labels
        classes = y.unique()
        if len(classes) < model.num_classes:  # a small eval.ood.fit_subset can miss some
            log.warning("Mahalanobis: %d of %d classes among the training images it is fitted "
                        "on; the others have no mean to be near", len(classes),
                        model.num_classes)
        self.means = torch.stack([z[y == c].mean(dim=0) for c in classes])
        centred = z - self.means[torch.searchsorted(classes, y)]
        self.precision = torch.linalg.pinv(centred.T @ centred / len(z), hermitian=True)
        self.mean_terms = ((self.means @ self.precision) * self.means).sum(dim=1)  # mu'P mu

    def score(self, batch):
        nearest = []
        for z in batch.features.double().split(QUERY_CHUNK):
            projected = z @ self.precision
            distance = ((projected * z).sum(dim=1, keepdim=True) - 2 * projected @ self.means.T
                        + self.mean_terms)
            nearest.append(distance.min(dim=1).values)
        return (-torch.cat(nearest)).float()
