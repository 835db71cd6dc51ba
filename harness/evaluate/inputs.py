"""Input checks and the class-sorted layout of queries and references that the ranking engine reads."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from harness.errors import UserError
from harness.evaluate.clustering import kmeans

ArrayLike = torch.Tensor | np.ndarray


def checked_embeddings(values: ArrayLike | Sequence[Sequence[float]], name: str) -> torch.Tensor:
    """A 2-D floating tensor with finite values, or a UserError saying what is wrong."""
    tensor = torch.as_tensor(values).detach()
    if tensor.ndim != 2:
        raise UserError(f"{name} must be a 2-D array (items x dimensions); got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise UserError(
            f"{name} is empty (shape {tuple(tensor.shape)}): evaluation needs at least one embedding"
        )
    if tensor.dtype != torch.float64:
        tensor = tensor.float()
    norms = torch.linalg.vector_norm(tensor, dim=1)
    if not bool(torch.isfinite(norms).all()):
        bad = int((~torch.isfinite(tensor)).any(dim=1).sum())
        if bad:
            raise UserError(
                f"{name} has {bad} row(s) with NaN or infinite values: the model output diverged; "
                "check the training loss and learning rate"
            )
    if not float(norms.max()) ** 2 < torch.finfo(tensor.dtype).max:
        raise UserError(
            f"{name} has norms too large to compute inner products in {tensor.dtype}: L2-normalise them"
        )
    return tensor


def checked_labels(
    values: ArrayLike | Sequence[int], count: int, name: str, device: torch.device
) -> torch.Tensor:
    """A 1-D int64 tensor of ``count`` labels, or a UserError."""
    tensor = torch.as_tensor(values)
    if tensor.ndim != 1 or tensor.shape[0] != count:
        raise UserError(
            f"{name} must be a 1-D array with one label per embedding ({count}); "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise UserError(f"{name} must hold integer class ids; got dtype {tensor.dtype}")
    return tensor.to(device=device, dtype=torch.int64)


def checked_ks(ks: Iterable[int]) -> list[int]:
    try:
        values = list(ks)
    except TypeError:
        raise UserError(f"ks must be a list of integers >= 1 (e.g. [1, 2, 4, 8]); got {ks!r}") from None
    if not values or any(isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1 for k in values):
        raise UserError(f"ks must be a non-empty list of integers >= 1 (e.g. [1, 2, 4, 8]); got {values!r}")
    return [int(k) for k in values]


class ClassRanges(NamedTuple):
    """Per sorted position or per class, as plain lists (fast scalar reads in the block loops)."""

    query_class: list[int]  # per sorted query: its class index
    reference_class: list[int]  # per sorted reference: its class index
    query_start: list[int]  # per class: first sorted query
    query_end: list[int]  # per class: one past its last sorted query
    reference_start: list[int]  # per class: first sorted reference
    reference_end: list[int]  # per class: one past its last sorted reference


@dataclass(frozen=True)
class SortedSets:
    """Queries and references sorted by label, with each class's index range on both sides."""

    queries: torch.Tensor
    references: torch.Tensor
    leave_one_out: bool
    query_order: torch.Tensor  # input index of each sorted query
    query_class: torch.Tensor  # (n_queries,) class index of each sorted query
    reference_start: torch.Tensor  # per class: first sorted reference index
    reference_count: torch.Tensor  # per class: number of references
    ranges: ClassRanges  # the same as lists, with the query ends and reference ends


def sort_by_class(
    embeddings: ArrayLike,
    labels: ArrayLike,
    gallery: ArrayLike | None,
    gallery_labels: ArrayLike | None,
    group_size: int | None = None,
) -> SortedSets:
    """Validated inputs sorted by class; with ``group_size``, classes are ordered by k-means groups
    of their mean embeddings, one group per ``group_size`` items (similar classes share blocks: a
    matter of speed only)."""
    queries = checked_embeddings(embeddings, "embeddings")
    query_labels = checked_labels(labels, queries.shape[0], "labels", queries.device)
    if (gallery is None) != (gallery_labels is None):
        raise UserError(
            "gallery and gallery_labels must be given together (query -> gallery mode) or both left out"
        )
    if gallery is None or gallery_labels is None:  # both or neither, checked above
        references, reference_labels = queries, query_labels
    else:
        references = checked_embeddings(gallery, "gallery").to(queries.device)
        reference_labels = checked_labels(
            gallery_labels, references.shape[0], "gallery_labels", queries.device
        )
        if references.shape[1] != queries.shape[1]:
            raise UserError(
                f"gallery has {references.shape[1]} dimensions but embeddings have {queries.shape[1]}: "
                "embed both with the same model"
            )
    dtype = torch.float64 if torch.float64 in (queries.dtype, references.dtype) else torch.float32
    # label bookkeeping in numpy: small single-threaded work (torch's threads only add latency here)
    query_np, reference_np = query_labels.cpu().numpy(), reference_labels.cpu().numpy()
    classes = np.unique(np.concatenate([query_np, reference_np]))
    query_class, reference_class = np.searchsorted(classes, query_np), np.searchsorted(classes, reference_np)
    groups = -(-max(len(queries), len(references)) // group_size) if group_size else 1
    if 1 < groups < len(classes):
        position = _class_order(queries, query_class, references, reference_class, len(classes), groups)
        query_class, reference_class = position[query_class], position[reference_class]
    query_order = np.argsort(query_class, kind="stable")
    reference_order = np.argsort(reference_class, kind="stable")
    query_count = np.bincount(query_class, minlength=len(classes))
    reference_count = np.bincount(reference_class, minlength=len(classes))
    query_end, reference_end = np.cumsum(query_count), np.cumsum(reference_count)
    device = queries.device

    def tensor(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values).to(device=device, dtype=torch.int64)

    sorted_queries = queries.to(dtype)[tensor(query_order)].contiguous()
    return SortedSets(
        queries=sorted_queries,
        references=sorted_queries
        if gallery is None
        else references.to(dtype)[tensor(reference_order)].contiguous(),
        leave_one_out=gallery is None,
        query_order=tensor(query_order),
        query_class=tensor(query_class[query_order]),
        reference_start=tensor(reference_end - reference_count),
        reference_count=tensor(reference_count),
        ranges=ClassRanges(
            query_class=query_class[query_order].tolist(),
            reference_class=reference_class[reference_order].tolist(),
            query_start=(query_end - query_count).tolist(),
            query_end=query_end.tolist(),
            reference_start=(reference_end - reference_count).tolist(),
            reference_end=reference_end.tolist(),
        ),
    )


def _class_order(
    queries: torch.Tensor,
    query_class: np.ndarray,
    references: torch.Tensor,
    reference_class: np.ndarray,
    classes: int,
    groups: int,
) -> np.ndarray:
    """New position of each class: classes grouped by k-means on one member of each, so that a
    query's nearest other-class references tend to share its blocks (fewer updates of its top R-1)."""
    members = torch.empty(classes, queries.shape[1], dtype=torch.float32, device=queries.device)
    for embeddings, of_class in ((references, reference_class), (queries, query_class)):
        present, first = np.unique(of_class, return_index=True)
        members[torch.from_numpy(present)] = embeddings[torch.from_numpy(first)].float()
    with one_thread_on_cpu(members.device):
        group = kmeans(torch.nn.functional.normalize(members, dim=1), groups, seed=0, restarts=1, max_iter=10)
    position = np.empty(classes, dtype=np.int64)
    position[np.argsort(group.cpu().numpy(), kind="stable")] = np.arange(classes)
    return position


@contextmanager
def one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run torch's CPU ops on one thread: for many small sequential steps (a k-means of a few
    thousand points), where handing each op to a second thread costs more than it saves, above
    all on a busy machine, where the second thread may wait for a core."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
