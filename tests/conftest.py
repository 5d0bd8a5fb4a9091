"""Shared test setup: run JAX on the CPU unless the environment already chose a platform."""

from __future__ import annotations

import os

# Must happen before anything imports jax; CI sets it too, so this only fills in a default.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The on-disk cache (compiled programs, dataset splits) of this test session, never the user's.
if "GOSSIPFL_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["GOSSIPFL_CACHE_DIR"] = tempfile.mkdtemp(prefix="gossipfl-test-cache-")

from hypothesis import settings  # noqa: E402

# Property tests are derandomized so CI runs are reproducible; run with
# HYPOTHESIS_PROFILE=explore locally to search new examples.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
