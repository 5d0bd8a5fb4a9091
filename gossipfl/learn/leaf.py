"""LEAF's `synthetic(alpha, beta)` (Caldas et al. 2018, as used by FedProx, Li et al. 2020): a
federated logistic-regression task whose devices differ both in their labelling model (alpha) and
in their inputs (beta), generated here from the seed.

For each of `devices` devices k: u_k ~ N(0, alpha^2), B_k ~ N(0, beta^2) (standard deviations, as
in FedProx's generator); W_k (60 x 10) and b_k ~ N(u_k, 1); v_k ~ N(B_k, 1) per input dimension;
x ~ N(v_k, diag(j^-1.2)); y = argmax(W_k^T x + b_k). Device sizes are log-normal (FedProx's
lognormal(4, 2) + 50, capped here so the whole set stays small). Each device's examples are split
80/20 into train and test; the test sets are pooled. `owners` gives each training example's
device: the `natural` partition deals devices out to nodes (device k to node k mod N), so a node
holds whole devices and their own distribution.
"""

from __future__ import annotations

import numpy as np

DIMS, CLASSES, DEVICES = 60, 10, 30
MAX_PER_DEVICE = 2000


def make_leaf_synthetic(alpha: float, beta: float, *, seed: int = 0, devices: int = DEVICES) -> dict[str, np.ndarray]:
    """x_train (n, 60) float32, y_train int32, x_test, y_test, owners (n,) int32 device ids."""
    rng = np.random.default_rng([seed, 0x1EAF])
    sizes = np.minimum(rng.lognormal(4, 2, devices).astype(np.int64) + 50, MAX_PER_DEVICE)
    cov = np.arange(1, DIMS + 1, dtype=np.float64) ** -1.2
    parts = {"x_train": [], "y_train": [], "x_test": [], "y_test": [], "owners": []}
    for k in range(devices):
        u, b_mean = rng.normal(0, alpha), rng.normal(0, beta)
        W, b = rng.normal(u, 1, (DIMS, CLASSES)), rng.normal(u, 1, CLASSES)
        v = rng.normal(b_mean, 1, DIMS)
        x = rng.normal(v, np.sqrt(cov), (sizes[k], DIMS))
        y = np.argmax(x @ W + b, axis=1)
        cut = int(round(0.8 * sizes[k]))
        parts["x_train"].append(x[:cut])
        parts["y_train"].append(y[:cut])
        parts["x_test"].append(x[cut:])
        parts["y_test"].append(y[cut:])
        parts["owners"].append(np.full(cut, k))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    for key in ("x_train", "x_test"):
        out[key] = out[key].astype(np.float32)
    for key in ("y_train", "y_test", "owners"):
        out[key] = out[key].astype(np.int32)
    return out
