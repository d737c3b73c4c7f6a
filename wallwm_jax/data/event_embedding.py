"""How an event of the event index becomes the vector k-means clusters.

Embedding of an event = [sqrt(w) * text, sqrt(1 - w) * behaviour], w = `text_weight`:
  text      TF-IDF of the caption (uni- and bigrams) reduced by TruncatedSVD to `text_dims`;
  behaviour the event's actions and states [L, 8], normalised with the dataset's norm stats,
            linearly resampled to `traj_points` steps and flattened [traj_points * 8].
Each block is L2-normalised per event before weighting, so the squared distance k-means uses
is w * (text distance)^2 + (1 - w) * (behaviour distance)^2, whatever the block dimensions.
"""

from __future__ import annotations

import numpy as np

from wallwm_jax.data import statistics


def resample_trajectory(x: np.ndarray, points: int) -> np.ndarray:
    """x float[L, D] -> float[points, D] by linear interpolation over the event's span."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"trajectory must be a non-empty [L, D] array, got shape {x.shape}")
    if points < 1:
        raise ValueError(f"traj_points must be >= 1, got {points}")
    src = np.linspace(0.0, 1.0, len(x)) if len(x) > 1 else np.zeros(1)
    dst = np.linspace(0.0, 1.0, points) if points > 1 else np.zeros(1)
    return np.stack([np.interp(dst, src, x[:, d]) for d in range(x.shape[1])], axis=1)


def behaviour_descriptor(actions: np.ndarray, states: np.ndarray, norm_stats: dict,
                         points: int, mode: str = "mean_std") -> np.ndarray:
    """Normalised actions [L, 4] and states [L, 4] of one event -> flat float[points * 8]."""
    traj = np.concatenate([statistics.normalize(actions, norm_stats["action"], mode),
                           statistics.normalize(states, norm_stats["state"], mode)], axis=1)
    return resample_trajectory(traj, points).reshape(-1)


def _l2_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)  # an all-zero row (no known word) stays zero


def caption_features(captions: list[str], dims: int, seed: int) -> np.ndarray:
    """TF-IDF + TruncatedSVD text features float[N, dims] (zero-padded when the vocabulary or
    the number of captions allows fewer components, so D never depends on the data)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(captions)
    out = np.zeros((len(captions), dims), np.float64)
    k = min(dims, tfidf.shape[1] - 1, len(captions) - 1)
    if k >= 1:
        svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=seed)
        out[:, :k] = svd.fit_transform(tfidf)
    else:  # one caption or a one-word vocabulary: the raw TF-IDF is already tiny
        out[:, :min(dims, tfidf.shape[1])] = tfidf.toarray()[:, :dims]
    return out


def embed_events(captions: list[str], behaviour: np.ndarray, *, text_dims: int,
                 text_weight: float, seed: int) -> np.ndarray:
    """float32 [N, text_dims + B] embeddings of N events from their captions and behaviour
    descriptors [N, B] (`behaviour_descriptor`), each block L2-normalised then weighted."""
    text = caption_features(captions, text_dims, seed)
    return np.concatenate([np.sqrt(text_weight) * _l2_rows(text),
                           np.sqrt(1.0 - text_weight) * _l2_rows(behaviour)],
                          axis=1).astype(np.float32)
