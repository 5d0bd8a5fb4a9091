"""Shared test setup: run JAX on the CPU unless the environment already chose a platform."""

from __future__ import annotations

import os

# Must happen before anything imports jax; CI sets it too, so this only fills in a default.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hypothesis import settings  # noqa: E402

# Property tests are derandomized so CI runs are reproducible; run with
# HYPOTHESIS_PROFILE=explore locally to search new examples.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
