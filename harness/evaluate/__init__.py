"""Retrieval metrics: pure functions on embeddings and labels (Recall@K, MAP@R, R-Precision, NMI).

Similarity is the inner product (cosine for the L2-normalised embeddings the models produce),
computed in float32 (float64 when an input is float64). Two modes:

* leave-one-out (``gallery is None``: CUB, Cars, SOP): every item queries all *other* items; the
  query itself is excluded by index, not by value (an exact duplicate of it is a reference).
* query -> gallery (In-Shop): every query ranks the whole gallery; nothing is excluded.

Ranking and tie rule (pessimistic): references are ranked by decreasing similarity, and a
reference of another class with the same similarity as a same-class one is ranked *ahead* of it.
So a query whose R same-class references have similarities s_1 >= ... >= s_R places its i-th
same-class reference at position p_i = i + w_i, w_i = number of other-class references with
similarity >= s_i. The metrics are exact for the similarities as computed (each pair's inner
product, one value per query and reference); another BLAS (faiss) may round the last bit
differently and so order near-ties (differences ~1e-7) differently.

* Recall@K: the fraction of queries with a same-class reference among their K nearest, i.e.
  p_1 <= K (the paper's definition). K above the number of references is clipped to it.
* R-Precision: (number of i with p_i <= R) / R.
* MAP@R: (1/R) * sum over i with p_i <= R of i / p_i (precision at each correct position of the
  first R, averaged over R).
* NMI: k-means (k = number of classes, k-means++ init, fixed seed, restarts) on the embeddings,
  then normalised mutual information between clusters and labels with the arithmetic mean of the
  two entropies as normaliser (scikit-learn's default).

Queries without a same-class reference (a singleton class in leave-one-out, a class missing from
the gallery): for Recall@K they count as misses (the paper's protocol keeps every test image;
``exclude_singletons=True`` drops them as pytorch-metric-learning does); for MAP@R and
R-Precision R = 0 and they are always excluded from the mean. A mean over no query is ``nan``.
"""

from harness.evaluate.clustering import normalized_mutual_info
from harness.evaluate.metrics import (
    METRICS,
    evaluate,
    first_correct_rank,
    map_at_r,
    nmi,
    r_precision,
    recall_at_k,
)

__all__ = [
    "METRICS",
    "evaluate",
    "first_correct_rank",
    "map_at_r",
    "nmi",
    "normalized_mutual_info",
    "r_precision",
    "recall_at_k",
]
