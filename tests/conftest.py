"""Shared test setup: run JAX on the CPU unless the environment already chose a platform."""

from __future__ import annotations

import os

# Must happen before anything imports jax; CI sets it too, so this only fills in a default.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
