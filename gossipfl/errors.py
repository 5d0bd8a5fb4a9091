"""The error hierarchy: every failure a user can cause is a `GossipError` that says what to do."""

from __future__ import annotations


class GossipError(Exception):
    """Base class of all errors gossipfl raises on purpose (bad input, bad config, bad data)."""


class TopologyError(GossipError):
    """A topology spec, file or graph is invalid (unknown name, bad size, disconnected...)."""


class WeightError(GossipError):
    """A mixing-weight rule is unknown or produced an invalid matrix."""


class DataError(GossipError):
    """A dataset cannot be loaded or does not have the expected layout."""


class PartitionError(GossipError):
    """A partition spec is invalid or cannot give every node data."""


class ModelError(GossipError):
    """A model name is unknown or does not fit the dataset's inputs."""


class ConfigError(GossipError):
    """An experiment config has an unknown key, a bad value, or contradicts a flag."""


class RunDirError(GossipError):
    """A run directory cannot be written, or its metrics/summary cannot be read."""


def one_line(exc: BaseException) -> str:
    """The message of `exc` on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__
