"""Energy score at temperature 1: the logits' log-sum-exp, the negative free energy (Liu et
al., arXiv 2010.03759)."""

from kdrun.evaluation.scores.base import Score


class Energy(Score):
    label = "energy"

    def score(self, batch):
        return batch.logits.logsumexp(dim=1)
