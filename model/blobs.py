"""Nodule candidates: peaks of a scale-space blob filter inside the lungs, described by what the filter measured.

A nodule is a roughly spherical dense blob in the lung; the vessels around it are tubes and the chest wall is a
plate, and they are as dense. The classic computer-aided-detection recipe separates them by the curvature of the
smoothed image (Lindeberg's scale-normalised Laplacian of Gaussian to find blobs at their size, the Hessian's
eigenvalues to tell a blob from a tube):

1. **Lungs**: air (below ``config.lung_hu``) in each slice that does not reach the slice's border (so the air
   around the body is left out), closed in 3-D so that nodules on the pleura and in the lung come in, plus a
   margin.
2. **Peaks** (:func:`find_peaks`): the scale-normalised LoG ``-s**2 * lap(G_s * v)`` at one scale per radius in
   ``config.blob_radii_mm`` (``s = r / sqrt(3)``, where a sphere of radius ``r`` answers most); its local maxima in
   the lungs (within ``config.peak_window``) are the peaks, each described by the features :func:`peak_features`
   names: the response, the Hessian's eigenvalues and the smoothed value at every scale, the voxel's value and its
   depth in the lungs.
3. **Ranking** (:func:`best_peaks`): by a learned ranker over those features when the model has one (a tree
   ensemble fitted on the training recording's peaks, :class:`~model.tree_ensemble.TreeEnsemble`), else by
   blobness ``s**2 * max(-lambda_weakest, 0)`` at the peak's best scale (a sphere curves down in all three
   directions, a tube in two, a plate in one); the ``config.candidates`` best are the candidates.

Pure NumPy/SciPy on one volume, most of its time in the six Gaussian passes. For the shipped model's validation
cases a peak lies on the nodule in 94 % and its ranker puts one among the best 24 in 77 % (``ranker`` and
``val_candidate_recall`` in its ``training.json``; model v2's blobness ranking: 74 %).

Example:
    >>> found = find_blobs(fine[0].numpy(), config, rank=model.rank_peaks)   # fine: (1, Z, Y, X) in [0, 1]
    >>> found.centres.shape, found.scores.shape, found.response.shape
    ((24, 3), (24,), (Z, Y, X))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from model.nodule_config import NoduleConfig


@dataclass
class Blobs:
    """Candidates of one volume.

    Attributes:
        centres: ``(K, 3)`` int64 voxel indices (slice, row, column), best first; fewer peaks than ``K`` repeat the
            last (a volume without any: its centre).
        scores: ``(K,)`` float32 the ranking score (the ranker's logit, or blobness; repeats score the minimum).
        response: ``(Z, Y, X)`` float32 the scale-normalised LoG, its maximum over scales, in the lungs (0
            elsewhere), clipped to ``[0, 1]``: the crops' second channel.
    """

    centres: np.ndarray
    scores: np.ndarray
    response: np.ndarray


@dataclass
class Peaks:
    """Every local maximum of the blob response in the lungs, with what the filter measured there.

    Attributes:
        at: ``(P, 3)`` int64 voxel indices.
        features: ``(P, F)`` float32, the columns :func:`peak_features` names (``F = 5 * scales + 2``).
        response: as :attr:`Blobs.response`.
    """

    at: np.ndarray
    features: np.ndarray
    response: np.ndarray

    def blobness(self) -> np.ndarray:
        """``(P,)`` the untrained ranking: ``s**2 * max(-lambda_weakest, 0)`` at each peak's best scale."""
        scales = (self.features.shape[1] - 2) // 5
        best = np.argmax(self.features[:, :scales], axis=1)
        weakest = self.features[np.arange(len(self.at)), scales + 4 * best + 2]
        return np.clip(-weakest, 0, None).astype(np.float32)


def peak_features(radii_mm: tuple[float, ...]) -> list[str]:
    """The names of :attr:`Peaks.features`' columns for a filter with these radii."""
    names = [f"log_r{r:g}" for r in radii_mm]
    for r in radii_mm:
        names += [f"hessian1_r{r:g}", f"hessian2_r{r:g}", f"hessian3_r{r:g}", f"smoothed_r{r:g}"]
    return names + ["value", "lung_depth_mm"]


def find_peaks(fine: np.ndarray, config: NoduleConfig) -> Peaks:
    """The blob response's peaks in the lungs of ``fine`` (``(Z, Y, X)`` windowed to ``[0, 1]`` on the model's
    fine grid) and, at each, the response at every scale, the scale-normalised Hessian eigenvalues (ascending) and
    the smoothed value at every scale, the voxel's value and its depth inside the lungs (mm)."""
    volume = np.asarray(fine, np.float32)
    region = lung_region(volume, config)
    spacing = np.asarray(config.spacing_mm)
    sigmas = [r / np.sqrt(3) / spacing for r in config.blob_radii_mm]  # per axis, in voxels
    smoothed = [ndimage.gaussian_filter(volume, sigma) for sigma in sigmas]
    logs = [-float(np.mean(sigma)) ** 2 * ndimage.laplace(smooth) for sigma, smooth in zip(sigmas, smoothed)]
    response = np.max(logs, axis=0)
    response[~region] = 0.0
    at = np.argwhere((response == ndimage.maximum_filter(response, size=config.peak_window)) & (response > 0))
    where = tuple(at.T)
    columns = [log[where] for log in logs]
    for sigma, smooth in zip(sigmas, smoothed):
        eigenvalues = hessian_eigenvalues(smooth, at) * float(np.mean(sigma)) ** 2
        columns += [*eigenvalues.T, smooth[where]]
    depth = ndimage.distance_transform_edt(region, sampling=spacing)
    columns += [volume[where], depth[where]]
    features = np.stack(columns, axis=1).astype(np.float32) if len(at) else np.zeros((0, len(columns)), np.float32)
    return Peaks(at.astype(np.int64), features, np.clip(response, 0.0, 1.0))


def best_peaks(peaks: Peaks, config: NoduleConfig, rank: Callable[[np.ndarray], np.ndarray] | None = None) -> Blobs:
    """The ``config.candidates`` best of ``peaks``, ranked by ``rank`` (peak features ``(P, F)`` -> scores ``(P,)``,
    the model's learned ranker) or, without one, by :meth:`Peaks.blobness`; too few peaks: the last is repeated
    (none: the volume's centre)."""
    scores = rank(peaks.features) if rank is not None and len(peaks.at) else peaks.blobness()
    order = np.argsort(-scores, kind="stable")[: config.candidates]
    centres, best = peaks.at[order], np.asarray(scores, np.float32)[order]
    if not len(centres):
        centres = np.array([[n // 2 for n in peaks.response.shape]], np.int64)
        best = np.zeros(1, np.float32)
    missing = config.candidates - len(centres)
    centres = np.concatenate([centres, np.repeat(centres[-1:], missing, axis=0)]).astype(np.int64)
    best = np.concatenate([best, np.full(missing, best.min(), np.float32)])
    return Blobs(centres, best, peaks.response)


def find_blobs(fine: np.ndarray, config: NoduleConfig,
               rank: Callable[[np.ndarray], np.ndarray] | None = None) -> Blobs:
    """The candidates of ``fine``: :func:`best_peaks` of :func:`find_peaks`."""
    return best_peaks(find_peaks(fine, config), config, rank)


def lung_region(volume: np.ndarray, config: NoduleConfig) -> np.ndarray:
    """``(Z, Y, X)`` bool: the lungs of a windowed volume, closed (about 12 mm) and widened by a 4 mm margin."""
    low, high = config.hu_window
    air = volume < (config.lung_hu - low) / (high - low)
    lungs = np.zeros_like(air)
    for z, plane in enumerate(air):
        labels, count = ndimage.label(plane)
        if not count:
            continue
        outside = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        inside = np.ones(count + 1, bool)
        inside[outside] = False
        inside[sizes < MIN_LUNG_PIXELS] = False
        inside[0] = False
        lungs[z] = inside[labels]
    ball = ndimage.generate_binary_structure(3, 1)
    closed = ndimage.binary_closing(lungs, ball, iterations=6)
    for z, plane in enumerate(closed):
        closed[z] = ndimage.binary_fill_holes(plane)
    return ndimage.binary_dilation(closed, ball, iterations=2)


#: Air pockets of fewer pixels in a slice are not lung (noise, bowel gas).
MIN_LUNG_PIXELS = 30


def hessian_eigenvalues(smooth: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The Hessian's eigenvalues ``(N, 3)``, ascending, of the smoothed volume ``smooth`` at the voxels ``at (N, 3)``:
    all three negative only where the image curves down in every direction (a blob; a tube in two, a plate in one).

    Second differences at those voxels only, with the stencil of ``np.gradient`` applied twice (steps of two voxels
    along an axis); the volume is padded with its edge values."""
    padded = np.pad(smooth, 2, mode="edge")
    centre = at + 2
    unit = np.eye(3, dtype=np.int64)

    def value(offset: np.ndarray) -> np.ndarray:
        return padded[tuple((centre + offset).T)]

    hessian = np.empty((len(at), 3, 3))
    for a in range(3):
        hessian[:, a, a] = (value(2 * unit[a]) - 2 * value(0 * unit[a]) + value(-2 * unit[a])) / 4
        for b in range(a + 1, 3):
            hessian[:, a, b] = hessian[:, b, a] = (value(unit[a] + unit[b]) - value(unit[a] - unit[b])
                                                   - value(unit[b] - unit[a]) + value(-unit[a] - unit[b])) / 4
    return np.linalg.eigvalsh(hessian) if len(at) else np.zeros((0, 3))
