"""Evaluation speed: ``harness.evaluate`` against faiss-cpu exact k-NN search, measured in the same run.

SOP size: 60,502 x 512 float32 L2-normalised embeddings, labels in 11,316 classes of 2 to ~14 (mean
5.35, shuffled), leave-one-out; ours computes Recall@{1,10,100,1000} + MAP@R in one call, faiss
``IndexFlatIP`` searches k = 1001 neighbours (its recalls come from the returned lists with the
self-match removed). In-Shop size: 14,218 queries x 12,612 gallery in 3,985 classes, K up to 50.
Each measurement runs in its own subprocess, which also reports its peak-RSS increase (VmHWM,
reset through /proc/self/clear_refs where the kernel allows, else measured from VmRSS before);
``--repeats`` alternating runs of each (2 by default), the fastest of each counts; its CPU time
(all threads) is shown too, being less sensitive than wall time to other work on the machine.
Both rankings are compared query by query: any query whose hit/miss differs at some K is listed
with the float64 margin of its deciding comparison (a near-tie resolved differently by float32
rounding in faiss's BLAS and ours). Prints the time ratio ours/faiss; the target is <= 1.0.

    python benchmarks/eval_speed.py --quick          # smaller sizes, while developing
    python benchmarks/eval_speed.py                  # SOP and In-Shop sizes (minutes on 2 cores)
    python benchmarks/eval_speed.py --data clustered # trained-like embeddings instead of random ones
    python benchmarks/eval_speed.py --only inshop    # one problem only (--only sop: the other)
    python benchmarks/eval_speed.py --screen never   # without the bfloat16 screen, for comparison
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOP_KS = (1, 10, 100, 1000)
INSHOP_KS = (1, 10, 20, 30, 40, 50)


@dataclass(frozen=True)
class Problem:
    """One benchmark problem, regenerated identically in every subprocess from its seed."""

    name: str
    queries: int
    gallery: int  # 0: leave-one-out
    classes: int
    ks: tuple[int, ...]


def problems(quick: bool) -> list[Problem]:
    if quick:
        return [Problem("sop", 12_000, 0, 2_243, SOP_KS), Problem("inshop", 3_000, 2_700, 840, INSHOP_KS)]
    return [Problem("sop", 60_502, 0, 11_316, SOP_KS), Problem("inshop", 14_218, 12_612, 3_985, INSHOP_KS)]


def labels_for(rng: np.random.Generator, count: int, classes: int) -> np.ndarray:
    """Every class at least twice (once with ``count < 2 * classes``), the rest uniformly, shuffled."""
    repeats = 2 if count >= 2 * classes else 1
    labels = np.concatenate(
        [np.tile(np.arange(classes), repeats), rng.integers(0, classes, count - repeats * classes)]
    )
    return rng.permutation(labels)


def embeddings_for(
    rng: np.random.Generator, labels: np.ndarray, classes: int, data: str, dims: int
) -> np.ndarray:
    """Random unit vectors, or trained-like ones: classes around 12 super-class directions."""
    if data == "random":
        values = rng.standard_normal((len(labels), dims), dtype=np.float32)
    else:
        supers = rng.standard_normal((12, dims), dtype=np.float32)
        centres = supers[rng.integers(0, 12, classes)] + 1.2 * rng.standard_normal(
            (classes, dims), dtype=np.float32
        )
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        values = centres[labels] + 0.085 * rng.standard_normal((len(labels), dims), dtype=np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def make(problem: Problem, data: str, seed: int, dims: int = 512) -> tuple[np.ndarray, ...]:
    """(queries, labels) or (queries, labels, gallery, gallery labels), float32 and int64."""
    rng = np.random.default_rng(seed)
    query_labels = labels_for(rng, problem.queries, problem.classes)
    gallery_labels = (
        labels_for(rng, problem.gallery, problem.classes) if problem.gallery else query_labels[:0]
    )
    both = embeddings_for(rng, np.concatenate([query_labels, gallery_labels]), problem.classes, data, dims)
    if not problem.gallery:
        return both, query_labels
    return both[: problem.queries], query_labels, both[problem.queries :], gallery_labels


# ------------------------------------------------------------------------------ subprocess workers


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def worker(args: argparse.Namespace) -> dict:
    """Time one method on one problem; return its timing, peak memory and per-query results."""
    problem = next(p for p in problems(args.quick) if p.name == args.problem)
    arrays = make(problem, args.data, args.seed)
    if args.worker == "ours":
        import torch

        from harness.evaluate import evaluate, first_correct_rank, screen

        screen.MODE = args.screen
        tensors = [torch.from_numpy(a) for a in arrays]
        gallery = {"gallery": tensors[2], "gallery_labels": tensors[3]} if problem.gallery else {}
        rss_before, peak_reset = _status("VmRSS"), _reset_peak()
        start, cpu_start = time.perf_counter(), time.process_time()
        values = evaluate(tensors[0], tensors[1], ks=problem.ks, metrics=("recall", "map_at_r"), **gallery)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        peak = _status("VmHWM")
        start = time.perf_counter()
        ranks = first_correct_rank(tensors[0], tensors[1], **gallery).numpy()
        recall_only = time.perf_counter() - start
        threads = torch.get_num_threads()
        extra = {"recall_only_seconds": recall_only}
    else:
        import faiss

        queries, query_labels = arrays[0], arrays[1]
        references, reference_labels = (arrays[2], arrays[3]) if problem.gallery else (queries, query_labels)
        r_max = int(np.bincount(reference_labels).max())
        k = max(problem.ks[-1], r_max) + (0 if problem.gallery else 1)
        rss_before, peak_reset = _status("VmRSS"), _reset_peak()
        start, cpu_start = time.perf_counter(), time.process_time()
        index = faiss.IndexFlatIP(queries.shape[1])
        index.add(references)
        _, neighbours = index.search(queries, k)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        peak = _status("VmHWM")
        if not problem.gallery:  # drop the self-match (or the last neighbour if it is absent)
            is_self = neighbours == np.arange(len(queries))[:, None]
            is_self[~is_self.any(axis=1), -1] = True
            neighbours = neighbours[~is_self].reshape(len(queries), k - 1)
        correct = reference_labels[neighbours] == query_labels[:, None]
        ranks = np.where(correct.any(axis=1), correct.argmax(axis=1) + 1, 0)
        relevant = np.bincount(reference_labels, minlength=query_labels.max() + 1)[query_labels] - (
            0 if problem.gallery else 1
        )
        values = {f"recall@{k}": float(((ranks >= 1) & (ranks <= k)).mean()) for k in problem.ks}
        values["map_at_r"] = float(
            np.mean([_average_precision(c, r) for c, r in zip(correct, relevant, strict=True) if r])
        )
        threads = faiss.omp_get_max_threads()
        extra = {}
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "extra_memory_bytes": peak - rss_before,
        "peak_reset": peak_reset,
        "threads": threads,
        "values": values,
        "ranks": ranks.tolist(),
        **extra,
    }


def _average_precision(correct: np.ndarray, relevant: int) -> float:
    first = correct[:relevant]
    return float((np.cumsum(first) / np.arange(1, relevant + 1) * first).sum() / relevant)


# ------------------------------------------------------------------------------------------- driver


def run_worker(method: str, problem: Problem, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--problem", problem.name, "--data", args.data]
    command += ["--seed", str(args.seed), "--screen", args.screen] + (["--quick"] if args.quick else [])
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    load = os.getloadavg()[0]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{method} worker failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_before"] = load
    return result


def deciding_margins(
    problem: Problem, args: argparse.Namespace, queries: np.ndarray, k_of: dict
) -> list[str]:
    """Float64 margin (best same-class minus K-th other-class similarity) of differing queries."""
    arrays = make(problem, args.data, args.seed)
    embeddings, labels = arrays[0].astype(np.float64), arrays[1]
    references, reference_labels = (
        (arrays[2].astype(np.float64), arrays[3]) if problem.gallery else (embeddings, labels)
    )
    lines = []
    for q in queries[:20]:
        similarity = references @ embeddings[q]
        same = reference_labels == labels[q]
        if not problem.gallery:
            same[q] = False
            similarity[q] = -np.inf
        k = k_of[int(q)]
        wrong = np.sort(similarity[~same])[::-1]
        margin = similarity[same].max() - wrong[k - 1] if same.any() and k <= len(wrong) else float("nan")
        lines.append(f"query {q} at K={k}: float64 margin {margin:.3e}")
    return lines


def compare(problem: Problem, ours: dict, faiss: dict, args: argparse.Namespace) -> list[str]:
    ours_rank, faiss_rank = np.array(ours["ranks"]), np.array(faiss["ranks"])
    faiss_rank = np.where(faiss_rank == 0, np.iinfo(np.int64).max, faiss_rank)  # beyond its k
    ours_rank = np.where(ours_rank == 0, np.iinfo(np.int64).max, ours_rank)
    lines, differing, k_of = [], set(), {}
    for k in problem.ks:
        diff = np.flatnonzero((ours_rank <= k) != (faiss_rank <= k))
        differing.update(diff.tolist())
        k_of.update({int(q): k for q in diff})
        lines.append(
            f"| recall@{k} | {ours['values'][f'recall@{k}']:.6f} | "
            f"{faiss['values'][f'recall@{k}']:.6f} | {len(diff)} |"
        )
    lines.append(f"| map_at_r | {ours['values']['map_at_r']:.6f} | {faiss['values']['map_at_r']:.6f} | |")
    verdict = "identical" if not differing else f"{len(differing)} queries differ"
    lines.append(f"\nRecall check query by query: {verdict}.")
    if differing:
        lines += deciding_margins(problem, args, np.array(sorted(differing)), k_of)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (12,000 / 3,000 x 2,700)")
    parser.add_argument("--data", choices=("random", "clustered"), default="random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only", choices=("sop", "inshop"), help="run only this problem (inshop: a few minutes, sop: longer)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the fastest counts")
    parser.add_argument(
        "--screen",
        choices=("auto", "always", "never"),
        default="auto",
        help="harness.evaluate's bfloat16 screen (query -> gallery): auto (where the CPU has native "
        "bfloat16), always, never (the float32 engine alone, for comparison)",
    )
    parser.add_argument("--worker", choices=("ours", "faiss"), help=argparse.SUPPRESS)
    parser.add_argument("--problem", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    print(f"# eval_speed ({'quick' if args.quick else 'full'}, {args.data} embeddings, seed {args.seed})")
    import torch

    from harness.evaluate.screen import native_bfloat16

    native = "yes" if native_bfloat16(torch.device("cpu")) else "no"
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}")
    print(f"bfloat16 screen: {args.screen} (native bfloat16 on this CPU: {native})\n")
    for problem in problems(args.quick):
        if args.only and problem.name != args.only:
            continue
        mode = "leave-one-out" if not problem.gallery else f"query -> gallery ({problem.gallery:,})"
        print(f"## {problem.name}: {problem.queries:,} x 512, {problem.classes:,} classes, {mode}")
        runs: dict[str, list[dict]] = {"ours": [], "faiss": []}
        for _ in range(args.repeats):  # alternating, so that other load on the machine hits both
            for method in runs:
                runs[method].append(run_worker(method, problem, args))
        ours, faiss = (min(runs[method], key=lambda run: run["seconds"]) for method in ("ours", "faiss"))
        recall_only = min(run["recall_only_seconds"] for run in runs["ours"])
        print(
            "| method | seconds (fastest) | all runs | CPU seconds | extra peak memory | threads "
            "| load before |"
        )
        print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
        rows = (
            ("harness.evaluate (recall + MAP@R)", ours, [r["seconds"] for r in runs["ours"]]),
            ("faiss IndexFlatIP", faiss, [r["seconds"] for r in runs["faiss"]]),
        )
        for name, result, seconds in rows:
            print(
                f"| {name} | {result['seconds']:.2f} | {', '.join(f'{t:.2f}' for t in seconds)} "
                f"| {result['cpu_seconds']:.1f} | {result['extra_memory_bytes'] / 2**20:.0f} MiB"
                f"{'' if result['peak_reset'] else ' (from VmRSS)'} "
                f"| {result['threads']} | {result['load_before']:.2f} |"
            )
        only = [r["recall_only_seconds"] for r in runs["ours"]]
        print(
            f"| harness.first_correct_rank (recall only) | {recall_only:.2f} | "
            f"{', '.join(f'{t:.2f}' for t in only)} | | | | |"
        )
        print(
            f"\nratio ours/faiss: {ours['seconds'] / faiss['seconds']:.3f} (recall + MAP@R), "
            f"{recall_only / faiss['seconds']:.3f} (recall only); target <= 1.0; "
            f"in CPU time (less sensitive to other load): {ours['cpu_seconds'] / faiss['cpu_seconds']:.3f}\n"
        )
        print("| metric | ours | faiss | queries differing |")
        print("| --- | ---: | ---: | ---: |")
        print("\n".join(compare(problem, ours, faiss, args)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
