"""Frechet Inception Distance: Frechet distance between Gaussians fitted to Inception features.

FID = |mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2)), in float64.

The last trace is computed as the sum of square roots of the eigenvalues of the symmetric
PSD matrix S_r^(1/2) S_f S_r^(1/2) (which has the eigenvalues of S_r S_f), with scipy's
symmetric eigensolver. pytorch-fid and TTUR take scipy.linalg.sqrtm of the non-symmetric
product instead; for well-conditioned statistics (thousands of images) the two agree to
~1e-9 relative, but the eigenvalue route needs no fudge when the covariances are singular
(fewer images than 2048 features), where sqrtm returns complex or NaN results.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from progan.metrics.common import MetricError

DEFAULT_NUM_IMAGES = 50000


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N, D] features, float64."""
    x = np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise MetricError(f"FID needs features of at least 2 images, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def fid_from_features(features: torch.Tensor | np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """Frechet distance between the Gaussian fitted to `features` [N, D] and N(mu_ref, sigma_ref).

    With fewer images than dimensions (training-time FID on ~1k images) the covariance is
    A'A for A = centred features / sqrt(N - 1), and tr((A'A S)^(1/2)) is the sum of square
    roots of the eigenvalues of the small N x N matrix A S A': exact, and far cheaper than
    two 2048 x 2048 eigendecompositions.
    """
    x = np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    mu, sigma = feature_statistics(x)
    n, dims = x.shape
    if n - 1 >= dims:
        return frechet_distance(mu, sigma, mu_ref, sigma_ref)
    sigma_ref = np.asarray(sigma_ref, np.float64)
    if mu.shape != np.shape(mu_ref) or sigma_ref.shape != (dims, dims):
        raise MetricError(f"FID statistics do not match: {dims}-d features, reference mean {np.shape(mu_ref)}")
    a = (x - mu) / np.sqrt(n - 1)
    small = a @ sigma_ref @ a.T
    diff = mu - mu_ref
    distance = diff @ diff + np.sum(a * a) + np.trace(sigma_ref) - 2.0 * _sum_sqrt_eigenvalues(small)
    return max(float(distance), 0.0)


def _sum_sqrt_eigenvalues(symmetric: np.ndarray) -> float:
    eigenvalues = scipy.linalg.eigvalsh((symmetric + symmetric.T) / 2.0)
    # Eigenvalues within rounding of 0 are 0: their square roots would add ~sqrt(eps) each.
    cutoff = max(eigenvalues.max(), 0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return float(np.sqrt(eigenvalues[eigenvalues > cutoff]).sum())


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = scipy.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 sigma2)^(1/2)) for symmetric PSD sigma1, sigma2."""
    root = _psd_sqrt(sigma1)
    return _sum_sqrt_eigenvalues(root @ sigma2 @ root)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise MetricError(f"FID statistics do not match: means {mu1.shape} {mu2.shape}, "
                          f"covariances {sigma1.shape} {sigma2.shape}")
    if not (np.isfinite(sigma1).all() and np.isfinite(sigma2).all() and np.isfinite(mu1 - mu2).all()):
        raise MetricError("FID statistics hold NaN or infinite values (did the generator diverge?)")
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(distance), 0.0)  # rounding can leave -1e-12 for identical statistics
