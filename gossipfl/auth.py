"""The shared key that authenticates every frame: from a key file or GOSSIPFL_KEY, never a topology file."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigError
from .wire import MIN_KEY_BYTES

KEY_ENV = "GOSSIPFL_KEY"
HOW_TO = (f"pass --key-file PATH (a file holding at least {MIN_KEY_BYTES} random bytes, e.g. made with "
          f"`python -c \"import secrets; print(secrets.token_hex(32))\" > gossip.key`) or set {KEY_ENV}")


def load_key(key_file: str | Path | None, *, env: Mapping[str, str] | None = None) -> bytes | None:
    """The shared key from `key_file` ("-" reads standard input) or the GOSSIPFL_KEY variable;
    None when neither is given. Surrounding whitespace is ignored.

    Raises:
      ConfigError: if the file cannot be read or the key is shorter than 16 bytes.
    """
    env = os.environ if env is None else env
    if key_file is not None:
        source = "standard input" if str(key_file) == "-" else f"key file {str(key_file)!r}"
        try:
            raw = sys.stdin.buffer.read() if str(key_file) == "-" else Path(key_file).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read {source}: {e.strerror or e}") from None
    elif env.get(KEY_ENV):
        source, raw = KEY_ENV, env[KEY_ENV].encode()
    else:
        return None
    key = raw.strip()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"the key from {source} has {len(key)} bytes; it needs at least {MIN_KEY_BYTES}")
    return key


def generate_key() -> str:
    """A fresh random key (64 hex characters), for a launch's own child processes."""
    return secrets.token_hex(32)
