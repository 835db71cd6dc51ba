"""Slow per-anchor reference losses and pair weights, written directly from the paper's equations.

Each reference loops over the anchors in Python, computes the anchor's row of similarities
``S_i = E e_i``, lists its positives and negatives by index, mines them (Eq. 11-12) where the loss
does, and evaluates the loss term (Eq. 4-6, 9, 15, 16) or the printed weight formula (Eq. 7-8, 10,
13-14) as it reads; the sum over anchors is divided by m. Autograd gives the loss's gradient. It
shares no code with the vectorised losses on purpose: it is the independent statement of what each
loss means, used by the tests and by benchmarks/loss_speed.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor

AnchorTerm = Callable[[Tensor, Tensor, Tensor, Mapping[str, float]], Tensor]
AnchorWeights = Callable[[Tensor, Tensor, Tensor, Mapping[str, float]], tuple[Tensor, Tensor]]


def _log_one_plus_sum_exp(x: Tensor) -> Tensor:
    """log(1 + sum_k e^{x_k}), stably (0 for an empty x)."""
    return torch.logsumexp(torch.cat([x.new_zeros(1), x]), dim=0)


def _log_sum_exp_or_zero(x: Tensor) -> Tensor:
    """log(sum_k e^{x_k}); the empty sum is taken as 0 (the convention of the vectorised losses)."""
    return torch.logsumexp(x, dim=0) if x.numel() else x.new_zeros(())


def _softplus_mean(x: Tensor) -> Tensor:
    """1/n sum_k log(1 + e^{x_k}); 0 for an empty x."""
    if not x.numel():
        return x.new_zeros(())
    return torch.logaddexp(x, torch.zeros_like(x)).sum() / x.numel()


def ms_mine(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> tuple[Tensor, Tensor]:
    """Eq. 11-12 for one anchor: negatives above the hardest positive minus eps, positives below the
    hardest negative plus eps (none on a side whose opposite side is empty)."""
    s = row.detach()
    mined_neg = neg[s[neg] > s[pos].min() - hp["eps"]] if pos.numel() else neg[:0]
    mined_pos = pos[s[pos] < s[neg].max() + hp["eps"]] if neg.numel() else pos[:0]
    return mined_pos, mined_neg


def _ms_term(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> Tensor:
    """Eq. 15, one anchor: 1/alpha log(1 + sum_P e^{-alpha(S-lam)})
    + 1/beta log(1 + sum_N e^{beta(S-lam)})."""
    alpha, beta, lam = hp["alpha"], hp["beta"], hp["lam"]
    return (
        _log_one_plus_sum_exp(-alpha * (row[pos] - lam)) / alpha
        + _log_one_plus_sum_exp(beta * (row[neg] - lam)) / beta
    )


def _binomial_term(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> Tensor:
    """Eq. 9, one anchor: mean over P of log(1 + e^{alpha(lam-S)})
    + mean over N of log(1 + e^{beta(S-lam)})."""
    alpha, beta, lam = hp["alpha"], hp["beta"], hp["lam"]
    return _softplus_mean(alpha * (lam - row[pos])) + _softplus_mean(beta * (row[neg] - lam))


def _lifted_star_term(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> Tensor:
    """Eq. 16, one anchor: 1/alpha log sum_P e^{-alpha S} + 1/beta log sum_N e^{beta S}."""
    alpha, beta = hp["alpha"], hp["beta"]
    return _log_sum_exp_or_zero(-alpha * row[pos]) / alpha + _log_sum_exp_or_zero(beta * row[neg]) / beta


def _ms_mining_term(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> Tensor:
    """MS mining alone, one anchor: equal weights within each mined set, mean_P (1 - S) + mean_N (1 + S)."""
    return _mean_or_zero(1 - row[pos]) + _mean_or_zero(1 + row[neg])


def _mean_or_zero(values: Tensor) -> Tensor:
    """The mean; 0 for an empty tensor."""
    return values.mean() if values.numel() else values.new_zeros(())


def _contrastive_term(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> Tensor:
    """Eq. 4 summed over the anchor's pairs: sum_P (1 - S) + sum_N [S - lam]_+ (the +1 is a constant)."""
    return (1 - row[pos]).sum() + torch.relu(row[neg] - hp["lam"]).sum()


def _triplet_term(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> Tensor:
    """Eq. 5 over every (positive, negative) of the anchor: sum_p sum_n [S_an - S_ap + lam]_+."""
    return torch.relu(row[neg].unsqueeze(0) - row[pos].unsqueeze(1) + hp["lam"]).sum()


def _lifted_term(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> Tensor:
    """Eq. 6, one anchor: [log sum_P e^{lam - S} + log sum_N e^{S}]_+ (0 when either set is empty)."""
    if not pos.numel() or not neg.numel():
        return row.new_zeros(())
    return torch.relu(torch.logsumexp(hp["lam"] - row[pos], dim=0) + torch.logsumexp(row[neg], dim=0))


def _binlifted_term(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> Tensor:
    """BinLifted, one anchor: the average of the Binomial (Eq. 9) and LiftedStruct* (Eq. 16) terms."""
    return (_binomial_term(row, pos, neg, hp) + _lifted_star_term(row, pos, neg, hp)) / 2


def _ms_weights(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> tuple[Tensor, Tensor]:
    """Eq. 14 and Eq. 13 as printed: w+ = 1 / (e^{-alpha(lam - S_ij)} + sum_P e^{-alpha(S_ik - S_ij)}),
    w- = 1 / (e^{beta(lam - S_ij)} + sum_N e^{beta(S_ik - S_ij)})."""
    alpha, beta, lam = hp["alpha"], hp["beta"], hp["lam"]
    s_pos, s_neg = row[pos], row[neg]
    w_pos = 1 / (
        torch.exp(-alpha * (lam - s_pos)) + torch.exp(-alpha * (s_pos[None, :] - s_pos[:, None])).sum(1)
    )
    w_neg = 1 / (torch.exp(beta * (lam - s_neg)) + torch.exp(beta * (s_neg[None, :] - s_neg[:, None])).sum(1))
    return w_pos, w_neg


def _binomial_weights(
    row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]
) -> tuple[Tensor, Tensor]:
    """Eq. 10: w+ = alpha e^{alpha(lam-S)} / (1 + e^{alpha(lam-S)}) / P_i,
    w- = beta e^{beta(S-lam)} / (1 + ...) / N_i."""
    alpha, beta, lam = hp["alpha"], hp["beta"], hp["lam"]
    up, un = torch.exp(alpha * (lam - row[pos])), torch.exp(beta * (row[neg] - lam))
    return alpha * up / (1 + up) / max(pos.numel(), 1), beta * un / (1 + un) / max(neg.numel(), 1)


def _lifted_star_weights(
    row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]
) -> tuple[Tensor, Tensor]:
    """Eq. 7-8 with the temperatures of Eq. 16: w+ = 1 / sum_P e^{alpha(S_ij - S_ik)},
    w- = 1 / sum_N e^{beta(S_ik - S_ij)}."""
    alpha, beta = hp["alpha"], hp["beta"]
    s_pos, s_neg = row[pos], row[neg]
    w_pos = 1 / torch.exp(alpha * (s_pos[:, None] - s_pos[None, :])).sum(1)
    w_neg = 1 / torch.exp(beta * (s_neg[None, :] - s_neg[:, None])).sum(1)
    return w_pos, w_neg


def _binlifted_weights(
    row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]
) -> tuple[Tensor, Tensor]:
    """The average of Eq. 10 and Eq. 7-8 (with temperatures)."""
    (bp, bn), (lp, ln) = _binomial_weights(row, pos, neg, hp), _lifted_star_weights(row, pos, neg, hp)
    return (bp + lp) / 2, (bn + ln) / 2


def _lifted_weights(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> tuple[Tensor, Tensor]:
    """Eq. 7-8 on an anchor whose hinge (Eq. 6) is active, zero otherwise."""
    active = bool(_lifted_term(row, pos, neg, hp) > 0)
    w_pos, w_neg = _lifted_star_weights(row, pos, neg, {"alpha": 1.0, "beta": 1.0})
    return w_pos * active, w_neg * active


def _equal_weights(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> tuple[Tensor, Tensor]:
    """MS mining alone: weight 1/|P_i| on every mined positive, 1/|N_i| on every mined negative."""
    n_pos, n_neg = pos.numel(), neg.numel()
    return row.new_full((n_pos,), 1.0 / max(n_pos, 1)), row.new_full((n_neg,), 1.0 / max(n_neg, 1))


def _contrastive_weights(
    row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]
) -> tuple[Tensor, Tensor]:
    """Eq. 4: weight 1 on every positive and on the negatives with S > lam."""
    return row.new_ones(pos.numel()), (row[neg] > hp["lam"]).to(row.dtype)


def _triplet_weights(row: Tensor, pos: Tensor, neg: Tensor, hp: Mapping[str, float]) -> tuple[Tensor, Tensor]:
    """Eq. 5: each pair's weight is the number of active triplets it belongs to."""
    active = (row[neg].unsqueeze(0) - row[pos].unsqueeze(1) + hp["lam"] > 0).to(row.dtype)
    return active.sum(1), active.sum(0)


# name -> (anchor term, anchor weights, whether the anchor's pairs are first mined with Eq. 11-12)
REFERENCES: dict[str, tuple[AnchorTerm, AnchorWeights, bool]] = {
    "ms": (_ms_term, _ms_weights, True),
    "ms_mining": (_ms_mining_term, _equal_weights, True),
    "ms_weighting": (_ms_term, _ms_weights, False),
    "binomial": (_binomial_term, _binomial_weights, False),
    "binomial_m": (_binomial_term, _binomial_weights, True),
    "lifted_star": (_lifted_star_term, _lifted_star_weights, False),
    "lifted_star_m": (_lifted_star_term, _lifted_star_weights, True),
    "binlifted": (_binlifted_term, _binlifted_weights, False),
    "contrastive": (_contrastive_term, _contrastive_weights, False),
    "triplet": (_triplet_term, _triplet_weights, False),
    "lifted": (_lifted_term, _lifted_weights, False),
}


def _anchors(
    embeddings: Tensor, labels: Tensor, hparams: Mapping[str, float], mined: bool
) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
    """For each anchor i: (i, S_i, positive indices, negative indices), mined by Eq. 11-12 if asked."""
    labels = labels.to(embeddings.device)
    for i in range(embeddings.shape[0]):
        row = embeddings @ embeddings[i]
        same = labels == labels[i]
        same[i] = False  # the self-pair is excluded by index, not by value
        pos, neg = same.nonzero().squeeze(1), (labels != labels[i]).nonzero().squeeze(1)
        if mined:
            pos, neg = ms_mine(row, pos, neg, hparams)
        yield i, row, pos, neg


def reference_loss(name: str, embeddings: Tensor, labels: Tensor, hparams: Mapping[str, float]) -> Tensor:
    """The loss ``name`` by a Python loop over anchors: (1/m) sum_i term_i. Differentiable by autograd."""
    term, _, mined = REFERENCES[name]
    total = embeddings.sum() * 0.0  # connected to the embeddings even when every term is empty
    for _, row, pos, neg in _anchors(embeddings, labels, hparams, mined):
        total = total + term(row, pos, neg, hparams)
    return total / embeddings.shape[0]


@torch.no_grad()
def reference_weights(
    name: str, embeddings: Tensor, labels: Tensor, hparams: Mapping[str, float]
) -> tuple[Tensor, Tensor]:
    """(w_pos, w_neg), (m, m), from the paper's weight equations anchor by anchor, divided by m."""
    _, weights, mined = REFERENCES[name]
    m = embeddings.shape[0]
    w_pos, w_neg = embeddings.new_zeros(m, m), embeddings.new_zeros(m, m)
    for i, row, pos, neg in _anchors(embeddings, labels, hparams, mined):
        w_pos[i, pos], w_neg[i, neg] = weights(row, pos, neg, hparams)
    return w_pos / m, w_neg / m
