"""Cluster-balanced event sampling: per-event probabilities from cluster ids, and their report.

Cluster c of n_c events gets total mass proportional to n_c**alpha, spread uniformly over its
events (alpha=1: as in the data; alpha=0: every cluster equally; in between: a temperature).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Added to realised and target frequencies inside the KL so a cluster the target gives no mass
# (impossible for probabilities from `event_sampling_probabilities`) yields a large, finite KL.
KL_EPSILON = 1e-9


def _check_cluster_ids(cluster_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    ids = np.asarray(cluster_ids)
    if ids.ndim != 1:
        raise ValueError(f"cluster_ids must be a 1-D array [N], got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError("cluster_ids is empty: need at least one event to sample from")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"cluster_ids must be integers, got dtype {ids.dtype} "
                         f"(first value {ids[0]!r})")
    return ids


def event_sampling_probabilities(cluster_ids: Sequence[int] | np.ndarray,
                                 alpha: float) -> np.ndarray:
    """Per-event sampling probability float64 [N] (sums to 1) for cluster ids int [N].

    Event i in cluster c (n_c events) gets n_c**alpha / sum_c' n_c'**alpha / n_c.
    """
    ids = _check_cluster_ids(cluster_ids)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise ValueError(f"alpha must be a real number >= 0, got {alpha!r}")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    sizes = counts.astype(np.float64)
    # Power of sizes relative to the largest, so a large alpha cannot overflow.
    mass = (sizes / sizes.max()) ** float(alpha)
    mass /= mass.sum()
    return mass[inverse] / sizes[inverse]


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def cluster_report(cluster_ids: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                   drawn_rows: Sequence[int] | np.ndarray | None = None) -> dict:
    """Cluster sizes, target cluster frequencies and effective clusters exp(H) of event
    probabilities `probs` [N]; with `drawn_rows` (event rows actually sampled), also the realised
    cluster frequencies and KL(realised || target) (natural log, with `KL_EPSILON` added to both
    frequencies).
    """
    ids = _check_cluster_ids(cluster_ids)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != ids.shape:
        raise ValueError(f"probs has shape {probs.shape}, expected one per event {ids.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probs must be finite and >= 0")
    if abs(probs.sum() - 1.0) > 1e-6:
        raise ValueError(f"probs must sum to 1, sum is {probs.sum():.8f}")
    clusters, inverse, sizes = np.unique(ids, return_inverse=True, return_counts=True)
    target = np.bincount(inverse, weights=probs, minlength=len(clusters))
    data = sizes / sizes.sum()
    report = {
        "clusters": clusters.tolist(),
        "sizes": sizes.tolist(),
        "num_events": int(ids.size),
        "target_frequencies": target.tolist(),
        "effective_clusters": float(np.exp(_entropy(target))),
        "effective_clusters_data": float(np.exp(_entropy(data))),
    }
    if drawn_rows is not None:
        rows = np.asarray(drawn_rows)
        if rows.ndim != 1 or rows.size == 0 or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"drawn_rows must be a non-empty 1-D integer array of event rows, "
                             f"got shape {rows.shape} dtype {rows.dtype}")
        if rows.min() < 0 or rows.max() >= ids.size:
            raise ValueError(f"drawn_rows must index events 0..{ids.size - 1}, "
                             f"got range [{rows.min()}, {rows.max()}]")
        realised = np.bincount(inverse[rows], minlength=len(clusters)) / rows.size
        kl = float(np.sum(realised * np.log((realised + KL_EPSILON) / (target + KL_EPSILON))))
        report.update(num_draws=int(rows.size), realised_frequencies=realised.tolist(),
                      kl_realised_target=kl)
    return report


def mixture_probabilities(event_probs: Sequence[np.ndarray],
                          weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Mix datasets as a plain list of (event probabilities p_d [N_d], weight w_d).

    Returns (dataset weights w_d / sum w [D], event probabilities over all datasets' events
    concatenated in order [sum N_d], = w_d / sum w * p_d), so drawing a dataset then an event
    inside it and drawing from the concatenation are the same distribution.
    """
    if len(event_probs) != len(weights):
        raise ValueError(f"{len(event_probs)} event probability vectors but "
                         f"{len(weights)} weights")
    if not weights:
        raise ValueError("weights is empty: a mixture needs at least one dataset")
    w = np.asarray(weights, dtype=np.float64)
    for d, value in enumerate(w):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"weights[{d}] = {weights[d]!r}: mixture weights must be finite "
                             "and >= 0")
    if w.sum() <= 0:
        raise ValueError(f"weights {list(weights)} are all zero: at least one must be > 0")
    w = w / w.sum()
    parts = []
    for d, p in enumerate(event_probs):
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 1 or p.size == 0 or (p < 0).any() or abs(p.sum() - 1.0) > 1e-6:
            raise ValueError(f"event_probs[{d}] must be a non-empty 1-D probability vector "
                             f"summing to 1 (shape {p.shape}, sum {p.sum():.6f})")
        parts.append(w[d] * p)
    return w, np.concatenate(parts)


def frequency_kl(counts: Sequence[float] | np.ndarray,
                 target: Sequence[float] | np.ndarray) -> float:
    """KL(realised || target) of cluster draw counts [C] against target frequencies [C]
    (natural log, `KL_EPSILON` added to both), as in `cluster_report`; 0.0 before any draw."""
    counts, target = np.asarray(counts, np.float64), np.asarray(target, np.float64)
    if counts.shape != target.shape:
        raise ValueError(f"counts {counts.shape} and target {target.shape} must have one entry "
                         f"per cluster")
    if counts.sum() <= 0:
        return 0.0
    realised = counts / counts.sum()
    return float(np.sum(realised * np.log((realised + KL_EPSILON) / (target + KL_EPSILON))))
