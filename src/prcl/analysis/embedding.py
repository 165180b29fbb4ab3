"""Representation-space measurements (Table 4) and 2-D projections (Figs. 6, 8, 9).

`ClassReservoir` keeps a uniform random sample of at most k pixels per class from a stream of
images (memory C·k·D however large the val set); `representation_quality` scores a labeled
sample with scikit-learn's Silhouette (higher is better) and Davies-Bouldin index (lower is better).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from prcl.analysis.errors import AnalysisError


def sample_per_class(labels: np.ndarray, max_per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of at most `max_per_class` items of every class in `labels` [N], drawn uniformly
    without replacement with a seeded generator, sorted by class then position."""
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size > max_per_class:
            idx = np.sort(rng.choice(idx, max_per_class, replace=False))
        keep.append(idx)
    return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)


class ClassReservoir:
    """A uniform sample without replacement of at most `k` items per class from a stream.

    Every item gets an independent uniform key; a class keeps its k smallest keys, which is a
    uniform k-subset of everything it was offered (bottom-k sampling), independent of the order
    and of how the stream was cut into `add` calls.
    """

    def __init__(self, num_classes: int, k: int, seed: int = 0) -> None:
        if k < 1:
            raise ValueError(f"k (max_per_class) must be >= 1, got {k}")
        self.num_classes, self.k = num_classes, k
        self.rng = np.random.default_rng(seed)
        self.keys: list[np.ndarray] = [np.zeros(0)] * num_classes
        self.items: list[Optional[np.ndarray]] = [None] * num_classes
        self.offered = np.zeros(num_classes, dtype=np.int64)

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Offer `features` [P, D] with class `labels` [P] in [0, C) (filter ignored pixels first)."""
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise ValueError(f"need features [P, D] and labels [P], got {features.shape} and {labels.shape}")
        keys = self.rng.random(labels.shape[0])
        for c in np.unique(labels):
            sel = labels == c
            self.offered[c] += int(sel.sum())
            old = self.items[c]
            feats = features[sel] if old is None else np.concatenate([old, features[sel]])
            all_keys = np.concatenate([self.keys[c], keys[sel]])
            if all_keys.size > self.k:
                best = np.argpartition(all_keys, self.k - 1)[: self.k]
                feats, all_keys = feats[best], all_keys[best]
            self.items[c], self.keys[c] = feats, all_keys

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """(features [N, D], labels [N]) of the classes seen, grouped by class."""
        present = [c for c in range(self.num_classes) if self.items[c] is not None]
        if not present:
            raise ValueError("the reservoir is empty: no labeled pixel was offered")
        feats = np.concatenate([self.items[c] for c in present])
        labels = np.concatenate([np.full(len(self.items[c]), c) for c in present])
        return feats, labels


def representation_quality(
    features: np.ndarray, labels: np.ndarray, *, max_per_class: Optional[int] = None, seed: int = 0
) -> dict:
    """Silhouette score and Davies-Bouldin index (Table 4) of `features` [N, D] grouped by `labels`
    [N], in float64 with Euclidean distance (scikit-learn). With `max_per_class` the score is
    computed on the per-class sample `sample_per_class(labels, max_per_class, seed)`."""
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"need features [N, D] and labels [N], got {features.shape} and {labels.shape}")
    if max_per_class is not None:
        keep = sample_per_class(labels, max_per_class, seed)
        features, labels = features[keep], labels[keep]
    classes, counts = np.unique(labels, return_counts=True)
    if classes.size < 2 or features.shape[0] <= classes.size:
        raise ValueError(f"Silhouette/DBI need at least 2 classes and more samples than classes; got "
                         f"{features.shape[0]} samples of {classes.size} classes")
    return {
        "silhouette": float(silhouette_score(features, labels, metric="euclidean")),
        "davies_bouldin": float(davies_bouldin_score(features, labels)),
        "num_samples": int(features.shape[0]),
        "samples_per_class": {int(c): int(n) for c, n in zip(classes, counts)},
    }


def tsne_2d(points: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """t-SNE [N, D] -> [N, 2] (scikit-learn, PCA initialisation); the perplexity is lowered for
    small N (it must stay below N). Raises AnalysisError below 4 points."""
    from sklearn.manifold import TSNE

    n = points.shape[0]
    if n < 4:
        raise AnalysisError(f"t-SNE needs at least 4 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(np.asarray(points, dtype=np.float64))


def pca_2d(points: np.ndarray) -> np.ndarray:
    """Projection of [N, D] onto its first two principal components, [N, 2]."""
    from sklearn.decomposition import PCA

    points = np.asarray(points, dtype=np.float64)
    if points.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 points, got {points.shape[0]}")
    out = PCA(n_components=min(2, points.shape[1], points.shape[0])).fit_transform(points)
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))  # a second axis of zeros if D or N is 1
