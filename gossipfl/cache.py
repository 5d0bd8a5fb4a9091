"""An on-disk cache shared by every gossipfl process on a machine: compiled XLA programs and the
bundled dataset's split, so the second and later node processes start in a fraction of the time.

The cache lives in $GOSSIPFL_CACHE_DIR, else $XDG_CACHE_HOME/gossipfl, else ~/.cache/gossipfl.
Deleting it is always safe. A cache that cannot be written is simply not used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CACHE_ENV = "GOSSIPFL_CACHE_DIR"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gossipfl"


def enable_compile_cache() -> None:
    """Keeps every compiled XLA program in the cache (node processes compile the same programs)."""
    import jax

    path = cache_dir() / "xla"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def save_arrays(path: Path, **arrays: Any) -> None:
    """Writes numpy arrays to a cache file (.npz) atomically; a cache that cannot be written is
    skipped."""
    import numpy as np

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass
