"""The registered losses: the paper's ablation rows (Table 2) and comparisons, as miner + weighting.

Hyperparameters keep the paper's names: ``alpha``, ``beta``, ``lam`` (lambda), ``eps`` (epsilon).
``preset="paper"`` (default) is alpha 2, beta 50, lambda 1, eps 0.1 (Sec. 5); ``preset="official"``
is alpha 2, beta 40, lambda 0.5, eps 0.1 (the official code). Presets set the defaults of every
loss of the MS family; an explicit hyperparameter overrides its preset value. The contrastive,
triplet and lifted losses have no values in the paper; their defaults are the same in both presets.

Each registration also declares the loss's search space (``search_space=``): the ranges a tuner
explores, each with its source. The MS-family ranges bracket both presets (the paper's and the
official code's values) by a factor of about five on the log-scaled temperatures and cover the useful
part of the similarity range for the thresholds; docs/fair.md lists them with their sources.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from losses.fused import FusedMultiSimilarity
from losses.gpw import GPWLoss, Kernel
from losses.miners import AllPairs, ContrastiveMiner, Miner, MultiSimilarityMiner
from losses.registry import LossConfigError, SearchParam, register_loss
from losses.weightings import (
    AverageWeighting,
    BinomialWeighting,
    EqualWeighting,
    LiftedStarWeighting,
    LiftedWeighting,
    MultiSimilarityWeighting,
    TripletWeighting,
    Weighting,
)

PRESETS: dict[str, dict[str, float]] = {
    "paper": {"alpha": 2.0, "beta": 50.0, "lam": 1.0, "eps": 0.1},
    "official": {"alpha": 2.0, "beta": 40.0, "lam": 0.5, "eps": 0.1},
}
# Margins the paper does not give: contrastive lam 0.5 is pytorch-metric-learning's default negative
# margin 1 in Euclidean distance on the unit sphere (|a-b| = 1 <=> S = 0.5); triplet lam 0.1 is
# FaceNet's margin 0.2 in squared distance (|a-b|^2 = 2 - 2S); lifted lam 1 is Song et al.'s margin.
OWN_DEFAULTS: dict[str, dict[str, float]] = {
    "contrastive": {"lam": 0.5},
    "triplet": {"lam": 0.1},
    "lifted": {"lam": 1.0},
}
_POSITIVE = ("alpha", "beta")

# Search ranges. alpha/beta: the paper's 2 and 50 (Sec. 5, from the histogram-loss paper), the official
# code's 2 and 40; log scale, about five times below and above. lam: the paper's 1 and the official 0.5;
# cosine similarities of unit embeddings lie in [-1, 1] and a threshold below 0 stops separating
# anything. eps: the paper's and official 0.1 (Eq. 11-12), up to three times that.
ALPHA = SearchParam("alpha", 0.5, 10.0, log=True, source="paper Sec. 5 and official code: 2")
BETA = SearchParam("beta", 10.0, 100.0, log=True, source="paper Sec. 5: 50; official code: 40")
LAM = SearchParam("lam", 0.0, 1.0, source="paper Sec. 5: 1; official code: 0.5; S in [-1, 1]")
EPS = SearchParam("eps", 0.0, 0.3, source="paper Sec. 5 and official code: 0.1")
CONTRASTIVE_MARGIN = SearchParam(
    "lam", 0.0, 0.9, source="PML ContrastiveLoss neg_margin 1 (Euclidean on the unit sphere) = S 0.5"
)
TRIPLET_MARGIN = SearchParam(
    "lam", 0.01, 0.5, log=True, source="FaceNet margin 0.2 in squared distance = S 0.1"
)
LIFTED_MARGIN = SearchParam("lam", 0.1, 2.0, source="Song et al. (lifted structure) margin 1")


def resolve_hparams(
    loss: str, preset: str, given: Mapping[str, float | None], defaults: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Fill the hyperparameters left as None from the preset (or ``defaults``) and check them."""
    if preset not in PRESETS:
        raise LossConfigError(
            f"loss {loss!r}: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}"
        )
    base = PRESETS[preset] if defaults is None else defaults
    values: dict[str, float] = {}
    for key, value in given.items():
        if isinstance(value, bool) or not (
            value is None or isinstance(value, numbers.Real)
        ):  # no True -> 1.0, '2' -> 2.0
            raise LossConfigError(f"loss {loss!r}: {key} must be a number, got {value!r}")
        number = float(base[key] if value is None else value)
        if not math.isfinite(number) or (key in _POSITIVE and number <= 0):
            kind = "a positive number" if key in _POSITIVE else "a finite number"
            raise LossConfigError(f"loss {loss!r}: {key} must be {kind}, got {value!r}")
        values[key] = number
    return values


def _loss(
    name: str,
    preset: str,
    values: dict[str, float],
    miner: Miner,
    weighting: Weighting,
    kernel: Kernel | None = None,
) -> GPWLoss:
    return GPWLoss(name, miner, weighting, {"preset": preset, **values}, kernel=kernel)


def _ms_mined(
    name: str,
    preset: str,
    values: dict[str, float],
    weighting: Weighting,
    kernel: Kernel | None = None,
) -> GPWLoss:
    """``weighting`` on the pairs the MS miner (Eq. 11-12, margin ``values["eps"]``) selects."""
    return _loss(name, preset, values, MultiSimilarityMiner(values["eps"]), weighting, kernel)


@register_loss(
    label="MS",
    equation="Eq. 15 (mining Eq. 11-12, weights Eq. 13-14)",
    similarities="SNP",
    search_space=(ALPHA, BETA, LAM, EPS),
)
def ms(
    *,
    preset: str = "paper",
    alpha: float | None = None,
    beta: float | None = None,
    lam: float | None = None,
    eps: float | None = None,
) -> GPWLoss:
    """Multi-Similarity loss, Eq. 15: MS mining (Eq. 11-12) then MS weighting (Eq. 13-14)."""
    hp = resolve_hparams("ms", preset, {"alpha": alpha, "beta": beta, "lam": lam, "eps": eps})
    weighting = MultiSimilarityWeighting(hp["alpha"], hp["beta"], hp["lam"])
    kernel = FusedMultiSimilarity(hp["alpha"], hp["beta"], hp["lam"], hp["eps"])
    return _ms_mined("ms", preset, hp, weighting, kernel)


@register_loss(label="MS mining", equation="Eq. 11-12, equal weights", similarities="P", search_space=(EPS,))
def ms_mining(*, preset: str = "paper", eps: float | None = None) -> GPWLoss:
    """MS mining alone (Eq. 11-12): equal weights within each mined set, 1/(m P_i) and 1/(m N_i)."""
    hp = resolve_hparams("ms_mining", preset, {"eps": eps})
    return _ms_mined("ms_mining", preset, hp, EqualWeighting(-1.0, per_anchor_mean=True))


@register_loss(
    label="MS weighting",
    equation="Eq. 15 over all pairs (weights Eq. 13-14)",
    similarities="SN",
    search_space=(ALPHA, BETA, LAM),
)
def ms_weighting(
    *, preset: str = "paper", alpha: float | None = None, beta: float | None = None, lam: float | None = None
) -> GPWLoss:
    """MS weighting alone: Eq. 15 (weights Eq. 13-14) over all pairs of the batch, no mining."""
    hp = resolve_hparams("ms_weighting", preset, {"alpha": alpha, "beta": beta, "lam": lam})
    weighting = MultiSimilarityWeighting(hp["alpha"], hp["beta"], hp["lam"])
    kernel = FusedMultiSimilarity(hp["alpha"], hp["beta"], hp["lam"], eps=None)
    return _loss("ms_weighting", preset, hp, AllPairs(), weighting, kernel)


@register_loss(
    label="Binomial", equation="Eq. 9 (weights Eq. 10)", similarities="S", search_space=(ALPHA, BETA, LAM)
)
def binomial(
    *, preset: str = "paper", alpha: float | None = None, beta: float | None = None, lam: float | None = None
) -> GPWLoss:
    """Binomial deviance, Eq. 9 (weights Eq. 10), over all pairs."""
    hp = resolve_hparams("binomial", preset, {"alpha": alpha, "beta": beta, "lam": lam})
    return _loss("binomial", preset, hp, AllPairs(), BinomialWeighting(hp["alpha"], hp["beta"], hp["lam"]))


@register_loss(
    label="Binomial_m",
    equation="Eq. 9 on pairs mined by Eq. 11-12",
    similarities="SP",
    search_space=(ALPHA, BETA, LAM, EPS),
)
def binomial_m(
    *,
    preset: str = "paper",
    alpha: float | None = None,
    beta: float | None = None,
    lam: float | None = None,
    eps: float | None = None,
) -> GPWLoss:
    """Binomial deviance, Eq. 9 (weights Eq. 10), over the pairs selected by MS mining (Eq. 11-12)."""
    hp = resolve_hparams("binomial_m", preset, {"alpha": alpha, "beta": beta, "lam": lam, "eps": eps})
    weighting = BinomialWeighting(hp["alpha"], hp["beta"], hp["lam"])
    return _ms_mined("binomial_m", preset, hp, weighting)


@register_loss(
    label="LiftedStruct*", equation="Eq. 16 (weights Eq. 7-8)", similarities="N", search_space=(ALPHA, BETA)
)
def lifted_star(*, preset: str = "paper", alpha: float | None = None, beta: float | None = None) -> GPWLoss:
    """LiftedStruct*, Eq. 16 (weights Eq. 7-8 with temperatures alpha, beta), over all pairs."""
    hp = resolve_hparams("lifted_star", preset, {"alpha": alpha, "beta": beta})
    return _loss("lifted_star", preset, hp, AllPairs(), LiftedStarWeighting(hp["alpha"], hp["beta"]))


@register_loss(
    label="LiftedStruct*_m",
    equation="Eq. 16 on pairs mined by Eq. 11-12",
    similarities="NP",
    search_space=(ALPHA, BETA, EPS),
)
def lifted_star_m(
    *,
    preset: str = "paper",
    alpha: float | None = None,
    beta: float | None = None,
    eps: float | None = None,
) -> GPWLoss:
    """LiftedStruct*, Eq. 16, over the pairs selected by MS mining (Eq. 11-12)."""
    hp = resolve_hparams("lifted_star_m", preset, {"alpha": alpha, "beta": beta, "eps": eps})
    weighting = LiftedStarWeighting(hp["alpha"], hp["beta"])
    return _ms_mined("lifted_star_m", preset, hp, weighting)


@register_loss(
    label="BinLifted",
    equation="(Eq. 9 + Eq. 16) / 2, weights (Eq. 10 + Eq. 7-8) / 2",
    similarities="SN",
    search_space=(ALPHA, BETA, LAM),
)
def binlifted(
    *, preset: str = "paper", alpha: float | None = None, beta: float | None = None, lam: float | None = None
) -> GPWLoss:
    """BinLifted: the average of Binomial (Eq. 9-10) and LiftedStruct* (Eq. 16, 7-8), over all pairs."""
    hp = resolve_hparams("binlifted", preset, {"alpha": alpha, "beta": beta, "lam": lam})
    weighting = AverageWeighting(
        BinomialWeighting(hp["alpha"], hp["beta"], hp["lam"]), LiftedStarWeighting(hp["alpha"], hp["beta"])
    )
    return _loss("binlifted", preset, hp, AllPairs(), weighting)


@register_loss(label="Contrastive", equation="Eq. 4", similarities="S", search_space=(CONTRASTIVE_MARGIN,))
def contrastive(*, preset: str = "paper", lam: float | None = None) -> GPWLoss:
    """Contrastive loss, Eq. 4: all positives and the negatives with S > lam, equal weights 1/m."""
    hp = resolve_hparams("contrastive", preset, {"lam": lam}, OWN_DEFAULTS["contrastive"])
    return _loss("contrastive", preset, hp, ContrastiveMiner(hp["lam"]), EqualWeighting(hp["lam"]))


@register_loss(label="Triplet", equation="Eq. 5", similarities="P", search_space=(TRIPLET_MARGIN,))
def triplet(*, preset: str = "paper", lam: float | None = None) -> GPWLoss:
    """Triplet loss, Eq. 5, summed over all triplets of the batch (inactive ones are 0), divided by m."""
    hp = resolve_hparams("triplet", preset, {"lam": lam}, OWN_DEFAULTS["triplet"])
    return _loss("triplet", preset, hp, AllPairs(), TripletWeighting(hp["lam"]))


@register_loss(
    label="LiftedStruct", equation="Eq. 6 (weights Eq. 7-8)", similarities="N", search_space=(LIFTED_MARGIN,)
)
def lifted(*, preset: str = "paper", lam: float | None = None) -> GPWLoss:
    """Lifted structure loss, Eq. 6 (weights Eq. 7-8 on anchors with an active hinge), over all pairs."""
    hp = resolve_hparams("lifted", preset, {"lam": lam}, OWN_DEFAULTS["lifted"])
    return _loss("lifted", preset, hp, AllPairs(), LiftedWeighting(hp["lam"]))
