"""Nodule candidates without training: blobs inside the lungs, found by scale-space filtering.

A nodule is a roughly spherical dense blob in the lung; the vessels around it are tubes and the chest wall is a
plate, and they are as dense. The classic computer-aided-detection recipe separates them by the curvature of the
smoothed image (Lindeberg's scale-normalised Laplacian of Gaussian to find blobs at their size, the Hessian's
eigenvalues to tell a blob from a tube):

1. **Lungs**: air (below ``config.lung_hu``) in each slice that does not reach the slice's border (so the air
   around the body is left out), closed in 3-D so that nodules on the pleura and in the lung come in, plus a
   margin.
2. **Blobs**: the scale-normalised LoG ``-s**2 * lap(G_s * v)`` at one scale per radius in ``config.blob_radii_mm``
   (``s = r / sqrt(3)``, where a sphere of radius ``r`` answers most); its local maxima in the lungs are the peaks.
3. **Blobness**: at each peak, the Hessian of ``G_s * v`` at the peak's best scale; its weakest curvature must be
   negative too (a sphere curves down in all three directions, a tube in two, a plate in one). The score is
   ``s**2 * max(-lambda_weakest, 0)``; the ``config.candidates`` best peaks are the candidates.

Pure NumPy/SciPy on one volume, most of its time in the six Laplacian-of-Gaussian passes. With the shipped model's 24
candidates the nodule is among them in 74 % of its validation cases (``val_candidate_recall`` in its
``training.json``); the learned detector it replaced found it among 6 peaks in about a third.

Example:
    >>> found = find_blobs(fine[0].numpy(), config)        # fine: (1, Z, Y, X) in [0, 1]
    >>> found.centres.shape, found.scores.shape, found.response.shape
    ((24, 3), (24,), (Z, Y, X))
"""

from __future__ import annotations

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
        scores: ``(K,)`` float32 blobness (0 where a candidate was repeated to fill ``K``).
        response: ``(Z, Y, X)`` float32 the scale-normalised LoG, its maximum over scales, in the lungs (0
            elsewhere), clipped to ``[0, 1]``: the crops' second channel.
    """

    centres: np.ndarray
    scores: np.ndarray
    response: np.ndarray


def find_blobs(fine: np.ndarray, config: NoduleConfig) -> Blobs:
    """The ``config.candidates`` most blob-like peaks of ``fine`` (``(Z, Y, X)`` windowed to ``[0, 1]`` on the
    model's fine grid)."""
    volume = np.asarray(fine, np.float32)
    region = lung_region(volume, config)
    spacing = np.asarray(config.spacing_mm)
    sigmas = [r / np.sqrt(3) / spacing for r in config.blob_radii_mm]  # per axis, in voxels
    response = np.full(volume.shape, -np.inf, np.float32)
    scale = np.zeros(volume.shape, np.int8)
    for i, sigma in enumerate(sigmas):
        log = -float(np.mean(sigma)) ** 2 * ndimage.gaussian_laplace(volume, sigma)
        better = log > response
        response[better], scale[better] = log[better], i
    response[~region] = 0.0
    at = np.argwhere((response == ndimage.maximum_filter(response, size=5)) & (response > 0))
    scores = np.zeros(len(at), np.float32)
    for i, sigma in enumerate(sigmas):
        chosen = np.flatnonzero(scale[tuple(at.T)] == i)
        if len(chosen):
            weakest = weakest_curvature(volume, sigma, at[chosen])
            scores[chosen] = float(np.mean(sigma)) ** 2 * np.clip(-weakest, 0, None)
    order = np.argsort(-scores, kind="stable")[: config.candidates]
    centres, scores = at[order], scores[order]
    if not len(centres):
        centres = np.array([[n // 2 for n in volume.shape]])
        scores = np.zeros(1, np.float32)
    missing = config.candidates - len(centres)
    centres = np.concatenate([centres, np.repeat(centres[-1:], missing, axis=0)]).astype(np.int64)
    scores = np.concatenate([scores, np.zeros(missing, np.float32)])
    return Blobs(centres, scores, np.clip(response, 0.0, 1.0))


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


def weakest_curvature(volume: np.ndarray, sigma: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The largest Hessian eigenvalue ``(N,)`` at the voxels ``at (N, 3)`` of ``volume`` smoothed by a Gaussian of
    ``sigma`` (voxels per axis): negative only where the image curves down in all three directions (a blob).

    Second differences at those voxels only, with the stencil of ``np.gradient`` applied twice (steps of two voxels
    along an axis); the smoothed volume is padded with its edge values."""
    smooth = np.pad(ndimage.gaussian_filter(volume, sigma), 2, mode="edge")
    centre = at + 2
    unit = np.eye(3, dtype=np.int64)

    def value(offset: np.ndarray) -> np.ndarray:
        return smooth[tuple((centre + offset).T)]

    hessian = np.empty((len(at), 3, 3))
    for a in range(3):
        hessian[:, a, a] = (value(2 * unit[a]) - 2 * value(0 * unit[a]) + value(-2 * unit[a])) / 4
        for b in range(a + 1, 3):
            hessian[:, a, b] = hessian[:, b, a] = (value(unit[a] + unit[b]) - value(unit[a] - unit[b])
                                                   - value(unit[b] - unit[a]) + value(-unit[a] - unit[b])) / 4
    return np.linalg.eigvalsh(hessian)[:, 2]  # ascending: the largest
