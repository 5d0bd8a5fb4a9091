"""Spectral analysis of a mixing matrix: SLEM, spectral gap and the rounds gossip needs, from a
dense eigensolve or, for a large sparse W, ARPACK on its extreme eigenvalues.

`gossipfl.graph.topology` re-exports the public names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
from scipy.sparse.csgraph import reverse_cuthill_mckee

from gossipfl.errors import WeightError, one_line
from gossipfl.graph.weights import Matrix

__all__ = ["Spectrum", "spectrum"]


@dataclass(frozen=True)
class Spectrum:
    """The eigenvalues of a mixing matrix that govern how fast gossip reaches consensus."""

    slem: float
    spectral_gap: float
    lambda2: float
    lambda_min: float

    def rounds_to(self, eps: float) -> int | float:
        """Predicted rounds for the consensus distance to shrink by a factor `eps` (0 < eps).

        Returns the smallest t with slem**t <= eps: 0 if eps >= 1, 1 if slem == 0 (one round
        reaches exact consensus), and math.inf if slem >= 1.
        """
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if eps >= 1:
            return 0
        if self.slem >= 1:
            return math.inf
        if self.slem <= 0:
            return 1
        rounds = max(1, math.ceil(math.log(eps) / math.log(self.slem)))
        # the ratio of logs can land one off an integer; settle it on the powers themselves
        while self.slem**rounds > eps:
            rounds += 1
        while rounds > 1 and self.slem ** (rounds - 1) <= eps:
            rounds -= 1
        return rounds


# Sparse W up to this size is analysed densely: exact, and quick at this size.
_DENSE_SPECTRUM_MAX = 1500
# A W whose reverse Cuthill-McKee envelope is at most this many entries per row (rings, paths,
# ladders) is factorised at once: its LU costs O(N), and Lanczos alone would need ~N steps there.
_NARROW_ENVELOPE = 16
# Above this many envelope entries an LU may not fit in memory: Lanczos gets a longer budget.
_SAFE_ENVELOPE = 50_000_000
# Lanczos restarts (of up to _NCV vectors) before falling back to shift-invert.
_RESTARTS, _RESTARTS_UNSAFE_LU, _NCV = 30, 300, 32
# Shift-invert looks just past a Gershgorin end of the spectrum, which an eigenvalue may reach
# (1 for a stochastic W); the offset keeps W - sigma*I non-singular.
_SHIFT = 1e-12


def spectrum(W: Matrix) -> Spectrum:
    """Spectral summary of mixing matrix `W`: SLEM, gap, second and smallest eigenvalue.

    The eigenvalue closest to 1 (the consensus direction) is excluded once. `W` may be a dense
    array or a scipy sparse matrix; a large sparse `W` (N > 1500) is never densified: its extreme
    eigenvalues come from ARPACK (Lanczos, else shift-invert with a sparse LU), seeded, so the
    result is reproducible. That path assumes the largest eigenvalue is the one excluded (true for
    any stochastic W).

    Raises:
        WeightError: `W` is not a square matrix, or ARPACK cannot resolve its spectrum.
    """
    if scipy.sparse.issparse(W):
        if len(W.shape) != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
            raise WeightError(f"spectrum needs a non-empty square matrix, got shape {W.shape}")
        W = scipy.sparse.csr_array(W, dtype=np.float64)
        if W.shape[0] > _DENSE_SPECTRUM_MAX:
            return _sparse_spectrum(W)
        W = W.toarray()
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise WeightError(f"spectrum needs a non-empty square matrix, got shape {W.shape}")
    if np.allclose(W, W.T, rtol=0.0, atol=1e-12):
        eigenvalues: np.ndarray = np.linalg.eigvalsh(W).astype(np.complex128)
    else:
        eigenvalues = np.linalg.eigvals(W)
    return _summarise(eigenvalues, float(eigenvalues.real.min()))


def _summarise(eigenvalues: np.ndarray, lambda_min: float) -> Spectrum:
    """The Spectrum of `eigenvalues` (all of them, or the extreme ones that decide it)."""
    rest = np.delete(eigenvalues, np.argmin(np.abs(eigenvalues - 1.0)))
    if rest.size == 0:
        return Spectrum(slem=0.0, spectral_gap=1.0, lambda2=0.0, lambda_min=lambda_min)
    slem = float(np.abs(rest).max())
    # snap round-off: J/N reaches consensus in one round; a disconnected graph never does
    slem = 0.0 if slem < 1e-12 else 1.0 if abs(slem - 1.0) < 1e-12 else slem
    return Spectrum(
        slem=slem, spectral_gap=1.0 - slem, lambda2=float(rest.real.max()), lambda_min=lambda_min
    )


def _sparse_spectrum(W: scipy.sparse.csr_array) -> Spectrum:
    """The Spectrum of a large sparse W from its extreme eigenvalues, without an N x N array."""
    symmetric = bool(abs(W - W.T).max() <= 1e-12)
    envelope = _envelope(W)
    top = _extreme(W, "top", 2, symmetric, envelope)
    bottom = _extreme(W, "bottom", 1, symmetric, envelope)
    found = np.concatenate([top, bottom]).astype(np.complex128)
    if not symmetric:
        # off the real axis a non-real pair can have the largest modulus: ask ARPACK for it too
        largest = _lanczos(W, "LM", 2, symmetric, _RESTARTS)
        if largest is not None:
            found = np.concatenate([found, np.delete(largest, np.argmin(np.abs(largest - 1.0)))])
    return _summarise(found, float(bottom.real.min()))


def _envelope(W: scipy.sparse.csr_array) -> int:
    """Entries in the lower envelope of W's symmetrised pattern after reverse Cuthill-McKee: a
    bound on the fill of its LU factors (about 2 * N for a ring, about N * N / 4 for expanders)."""
    pattern = abs(W) + abs(W).T
    order = reverse_cuthill_mckee(scipy.sparse.csr_matrix(pattern), symmetric_mode=True)
    permuted = scipy.sparse.csr_array(pattern[order][:, order])
    n = W.shape[0]
    rows = np.repeat(np.arange(n), np.diff(permuted.indptr))
    first = np.arange(n)
    np.minimum.at(first, rows, permuted.indices)
    return int(np.sum(np.arange(n) - first))


def _extreme(
    W: scipy.sparse.csr_array, end: str, k: int, symmetric: bool, envelope: int
) -> np.ndarray:
    """The `k` eigenvalues of W at the top (largest real part) or bottom of its spectrum.

    Lanczos first, unless W is narrow enough that a sparse LU is cheaper; shift-invert (an LU of
    W - sigma*I, sigma just past W's Gershgorin bound) when Lanczos does not converge, which is
    where the spectrum near that end is clustered (a ring of N nodes: gaps of order 1/N^2).
    """
    n = W.shape[0]
    if envelope > _NARROW_ENVELOPE * n:
        restarts = _RESTARTS if envelope <= _SAFE_ENVELOPE else _RESTARTS_UNSAFE_LU
        which = ("LA" if end == "top" else "SA") if symmetric else ("LR" if end == "top" else "SR")
        found = _lanczos(W, which, k, symmetric, restarts)
        if found is not None:
            return found
    diagonal = W.diagonal()
    radius = np.asarray(abs(W).sum(axis=1)).ravel() - np.abs(diagonal)
    bound = float(np.max(diagonal + radius) if end == "top" else np.min(diagonal - radius))
    offset = _SHIFT * max(1.0, abs(bound))
    sigma = bound + offset if end == "top" else bound - offset
    found = _shift_invert(W, k, sigma, symmetric)
    # Next to the eigenvalue at the bound (1, for a stochastic W) the k-th one is found to about
    # eps * gap**2 / offset: when the gap is wide, look again from a tenth of it away.
    gap = float(np.max(np.abs(found - sigma)))
    if k > 1 and gap * gap > 1e4 * offset:
        found = _shift_invert(W, k, bound + (0.1 * gap if end == "top" else -0.1 * gap), symmetric)
    return found


def _shift_invert(W: scipy.sparse.csr_array, k: int, sigma: float, symmetric: bool) -> np.ndarray:
    """The `k` eigenvalues of W nearest `sigma`, by Lanczos/Arnoldi on (W - sigma*I)^-1 (an LU)."""
    solve = scipy.sparse.linalg.eigsh if symmetric else scipy.sparse.linalg.eigs
    n = W.shape[0]
    try:
        return solve(W.tocsc(), k=k, sigma=sigma, which="LM", v0=_start(n), return_eigenvectors=False)
    except (scipy.sparse.linalg.ArpackError, RuntimeError) as exc:
        raise WeightError(
            f"cannot resolve the spectrum of this {n}-node mixing matrix (shift-invert at "
            f"{sigma:.6g}): {one_line(exc)}"
        ) from exc


def _lanczos(
    W: scipy.sparse.csr_array, which: str, k: int, symmetric: bool, restarts: int
) -> np.ndarray | None:
    """`k` eigenvalues of W by implicitly restarted Lanczos/Arnoldi, or None if not converged."""
    solve = scipy.sparse.linalg.eigsh if symmetric else scipy.sparse.linalg.eigs
    n = W.shape[0]
    try:
        return solve(
            W, k=k, which=which, v0=_start(n), ncv=min(n - 1, _NCV), tol=1e-10, maxiter=restarts,
            return_eigenvectors=False,
        )
    except scipy.sparse.linalg.ArpackNoConvergence:
        return None


def _start(n: int) -> np.ndarray:
    """ARPACK's starting vector: fixed, so that spectra are reproducible."""
    return np.random.default_rng(0).standard_normal(n)
