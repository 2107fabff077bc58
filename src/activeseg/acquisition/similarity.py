"""Image similarity by mutual information of joint intensity histograms (Nath et al., 2021).

Images are quantised once into ``bins`` equal-width intensity bins over a fixed range given
by the caller, so bins mean the same in every image (``svgd_mi``: the range of its pool and
labelled patches). The joint histogram of two equally shaped images counts pixel pairs
``(a[x], b[x])``; all histograms of one image against a set of images come from one
``np.bincount`` of precomputed indices.

``MI(a, b) = Σ p(i, j) log(p(i, j) / (p(i) p(j)))`` in nats (``0 log 0 = 0``): ``MI(a, a)``
is the entropy of ``a``'s histogram, ``MI(a, b) = 0`` when the intensities are independent.
"""

from __future__ import annotations

import numpy as np
import torch


def quantise(images: torch.Tensor | np.ndarray, bins: int, lo: float, hi: float) -> np.ndarray:
    """Bin indices int64 ``[N, P]`` (pixels flattened) of ``images`` ``[N, ...]`` in ``bins``
    equal bins over ``[lo, hi]`` (values outside go to the end bins)."""
    if bins < 2:
        raise ValueError(f"need at least 2 bins, got {bins}")
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    width = (hi - lo) / bins if hi > lo else 1.0
    return np.clip(np.floor((x - lo) / width), 0, bins - 1).astype(np.int64)


def mutual_information(a: np.ndarray, b: np.ndarray, bins: int) -> np.ndarray:
    """MI (nats) float64 ``[A, B]`` between every quantised image of ``a`` ``[A, P]`` and of
    ``b`` ``[B, P]`` (bin indices from :func:`quantise`, same ``P``)."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"images of {a.shape[1:]} and {b.shape[1:]} pixels cannot be paired")
    n, pixels = len(b), b.shape[1]
    base = np.arange(n, dtype=np.int64)[:, None] * bins * bins + b  # [B, P]: (image, j)
    out = np.empty((len(a), n), dtype=np.float64)
    for row, qa in enumerate(a):
        counts = np.bincount((base + qa[None] * bins).ravel(), minlength=n * bins * bins)
        joint = counts.reshape(n, bins, bins) / pixels  # [B, i (a), j (b)]
        pa = joint.sum(2, keepdims=True)
        pb = joint.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(joint > 0, joint * np.log(joint / (pa * pb)), 0.0)
        out[row] = terms.sum((1, 2))
    return out


def min_max(x: np.ndarray) -> np.ndarray:
    """``(x - min) / (max - min)`` float64; all zeros when ``x`` is constant."""
    x = np.asarray(x, dtype=np.float64)
    span = float(x.max() - x.min()) if len(x) else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)
