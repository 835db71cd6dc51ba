"""A plugin loss: contrastive loss (Eq. 4) with its own similarity margin, registered as 'my_contrastive'."""

from losses import GPWLoss, SearchParam, register_loss
from losses.miners import ContrastiveMiner
from losses.weightings import EqualWeighting

MARGIN = SearchParam("lam", 0.0, 0.9, source="cosine similarities lie in [-1, 1]")


@register_loss(label="MyContrastive", equation="Eq. 4", similarities="S", search_space=(MARGIN,))
def my_contrastive(*, lam: float = 0.3) -> GPWLoss:
    """Contrastive loss: every positive pair and the negatives above lam, equal weights."""
    return GPWLoss("my_contrastive", ContrastiveMiner(lam), EqualWeighting(lam), {"lam": lam})
