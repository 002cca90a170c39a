"""Maximum logit (Hendrycks et al., arXiv 1911.11132)."""

from kdrun.evaluation.scores.base import Score


class MaxLogit(Score):
    label = "max-logit"

    def score(self, batch):
        return batch.logits.max(dim=1).values
