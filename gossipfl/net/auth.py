"""The shared key that authenticates every frame: from a key file or GOSSIPFL_KEY, never a topology file."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

from gossipfl.errors import ConfigError
from gossipfl.net.wire import MIN_KEY_BYTES, Keys

KEY_ENV = "GOSSIPFL_KEY"
HOW_TO = (f"pass --key-file PATH (a file holding at least {MIN_KEY_BYTES} random bytes, e.g. made with "
          f"`python -c \"import secrets; print(secrets.token_hex(32))\" > gossip.key`) or set {KEY_ENV}")


def load_key(key_file: str | Path | None, *, env: Mapping[str, str] | None = None) -> Keys | None:
    """The shared key from `key_file` ("-" reads standard input) or the GOSSIPFL_KEY variable;
    None when neither is given. Surrounding whitespace is ignored.

    Key rotation: a key file (or GOSSIPFL_KEY, comma-separated) may hold several keys, one per
    line. The first signs this node's frames; frames signed with any of them are accepted. To
    rotate without dropping a frame, restart the nodes (each resumes from its checkpoint) with
    "old, new" (all accept the new key), then with "new, old" (all sign with it), then "new".

    Raises:
      ConfigError: if the file cannot be read or a key is shorter than 16 bytes.
    """
    env = os.environ if env is None else env
    if key_file is not None:
        source = "standard input" if str(key_file) == "-" else f"key file {str(key_file)!r}"
        try:
            raw = sys.stdin.buffer.read() if str(key_file) == "-" else Path(key_file).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read {source}: {e.strerror or e}") from None
        keys = [line.strip() for line in raw.splitlines() if line.strip()]
    elif env.get(KEY_ENV):
        source = KEY_ENV
        keys = [k.strip().encode() for k in env[KEY_ENV].split(",") if k.strip()]
    else:
        return None
    if not keys:
        raise ConfigError(f"{source} holds no key")
    for key in keys:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"a key from {source} has {len(key)} bytes; every key needs at least {MIN_KEY_BYTES}")
    return keys[0] if len(keys) == 1 else tuple(keys)


def generate_key() -> str:
    """A fresh random key (64 hex characters), for a launch's own child processes."""
    return secrets.token_hex(32)
