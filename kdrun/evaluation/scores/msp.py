"""Maximum softmax probability (Hendrycks & Gimpel, arXiv 1610.02136)."""

from kdrun.evaluation.scores.base import Score


class MaxSoftmax(Score):
    label = "MSP"

    def score(self, batch):
        return batch.logits.softmax(dim=1).max(dim=1).values
