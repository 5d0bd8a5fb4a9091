"""Typed experiment config: a frozen dataclass, loaded from TOML, overridden by command-line flags."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossipfl.errors import ConfigError
from gossipfl.graph.weights import WEIGHT_RULES

# The names configs accept (the modules that implement them import these; this module stays free
# of JAX so that launching and plotting start fast).
# see learn.algorithms
ALGORITHMS: tuple[str, ...] = ("dpsgd", "sgp", "gradient-tracking", "choco", "consensus", "push-sum",
                               "centralized")
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam")
MODELS: tuple[str, ...] = ("logreg", "mlp", "cnn")
MIXING_FORMS: tuple[str, ...] = ("auto", "sparse", "dense")
GOSSIP_MODES: tuple[str, ...] = ("async", "sync")
THREAD_POLICIES: tuple[str, ...] = ("auto", "always", "never")
ROBUST_RULES: tuple[str, ...] = ("none", "clip", "trim")
INIT_MODES: tuple[str, ...] = ("shared", "own")
ATTACKS: tuple[str, ...] = ("none", "sign_flip", "noise", "alie", "constant")


COMPRESSORS_HELP = "none, top-k:FRACTION, random-k:FRACTION (0 < FRACTION <= 1), qsgd:BITS (BITS in 2, 4, 8), sign"


def parse_compressor(spec: str) -> tuple[str, float]:
    """(kind, argument) of a compressor spec.

    Raises:
      ConfigError: for a malformed spec.
    """
    kind, _, arg = str(spec).partition(":")
    try:
        if kind in ("none", "sign") and not arg:
            return kind, 0.0
        if kind in ("top-k", "random-k"):
            fraction = float(arg)
            if 0 < fraction <= 1:
                return kind, fraction
        if kind == "qsgd" and int(arg) in (2, 4, 8) and str(int(arg)) == arg:
            return kind, float(int(arg))
    except ValueError:
        pass
    raise ConfigError(f"bad compressor {spec!r}; accepted: {COMPRESSORS_HELP}")


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Everything that defines a simulation run; the same keys work as flags and in TOML."""

    topology: str = "ring"  # inline spec (ring:16, torus:4x4, ...) or a topology file
    nodes: int | None = None  # size for specs that take one; 16 when neither gives it
    weights: str | None = None  # mixing-weight rule; a topology file's own rule, else metropolis
    algorithm: str = "dpsgd"  # dpsgd | sgp | gradient-tracking | consensus | push-sum | centralized
    dataset: str = "digits"  # digits | synthetic[:D:C] | path/to/data.npz
    partition: str = "iid"  # iid | dirichlet:ALPHA | shards:K
    model: str = "mlp"  # logreg | mlp | cnn
    hidden: int = 64  # hidden width of the MLP
    optimizer: str = "sgd"  # sgd | momentum | adam
    rounds: int = 1000
    lr: float = 0.1
    batch_size: int = 32  # per node and local step
    local_steps: int = 1  # local steps (each on its own minibatch) between two exchanges
    prox_mu: float = 0.0  # FedProx: weight of (mu/2)||x - x_combined||^2 in every local step
    compress: str = "none"  # choco: none | top-k:FRACTION | random-k:FRACTION | qsgd:BITS | sign
    gamma: float | str = "auto"  # choco's consensus step; auto: from the compression (see learn.algorithms.choco)
    dim: int = 100  # consensus: length of each node's random vector
    eval_every: int = 10  # rounds between test-set evaluations
    mixing: str = "auto"  # auto | sparse | dense kernel
    seed: int = 0
    init: str = "shared"  # shared: every node starts from one model | own: node i from its own seed
    out: str | None = None  # run directory; runs/<name> when unset
    name: str | None = None  # run name; derived from the config when unset
    # Byzantine robustness (simulator): how nodes combine what neighbours send, and who attacks.
    robust: str = "none"  # none (plain gossip) | clip (self-centred clipping) | trim (trimmed mean)
    clip_tau: float | str = "auto"  # clip radius, or auto: distance to the (trim+1)-th farthest neighbour
    trim: int = 1  # Byzantine neighbours tolerated: trim drops this many per end; auto clip_tau spares them
    attack: str = "none"  # none | sign_flip | noise | alie | constant: what the attackers send
    attackers: int | tuple[int, ...] = 0  # a count (placed at most one per honest neighbourhood) or node ids
    attack_scale: float | None = None  # sign_flip: -scale*x (1); noise: sigma (10); alie: z (1)

    def __post_init__(self) -> None:
        for key in ("topology", "algorithm", "dataset", "partition", "model", "optimizer", "mixing"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise ConfigError(f"{key} must be a non-empty string, got {getattr(self, key)!r}")
        for key in ("weights", "out", "name"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise ConfigError(f"{key} must be a string, got {getattr(self, key)!r}")
        _check_choice("algorithm", self.algorithm, ALGORITHMS)
        _check_choice("model", self.model, MODELS)
        if self.weights is not None:
            _check_choice("weights", self.weights, WEIGHT_RULES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("mixing", self.mixing, MIXING_FORMS)
        _check_choice("init", self.init, INIT_MODES)
        for key in ("rounds", "batch_size", "local_steps", "dim", "eval_every", "hidden"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if self.nodes is not None and (isinstance(self.nodes, bool) or not isinstance(self.nodes, int)
                                       or self.nodes < 2):
            raise ConfigError(f"nodes must be an integer >= 2 (a gossip network needs two nodes), got {self.nodes!r}")
        if (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float))
                or not 0 < self.lr < math.inf):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr!r}")
        if (isinstance(self.prox_mu, bool) or not isinstance(self.prox_mu, (int, float))
                or not 0 <= self.prox_mu < math.inf):
            raise ConfigError(f"prox_mu must be a finite number >= 0 (0: no proximal term), got {self.prox_mu!r}")
        self._check_compression()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in 0..2**32-1, got {self.seed!r}")
        self._check_byzantine()

    def _check_compression(self) -> None:
        parse_compressor(self.compress)
        if self.compress != "none" and self.algorithm != "choco":
            raise ConfigError(f"compress = {self.compress!r} applies to algorithm 'choco' (CHOCO-SGD), the one that "
                              f"sends compressed messages; {self.algorithm!r} sends dense ones — use --algorithm choco")
        if self.gamma != "auto" and (isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float))
                                     or not 0 < self.gamma <= 1):
            raise ConfigError(f"gamma must be 'auto' or a number in (0, 1], got {self.gamma!r}")

    def _check_byzantine(self) -> None:
        """Checks the robust-rule and attack keys (the graph-dependent checks come in `prepare`)."""
        _check_choice("robust", self.robust, ROBUST_RULES)
        _check_choice("attack", self.attack, ATTACKS)
        if self.clip_tau != "auto" and (isinstance(self.clip_tau, bool) or not isinstance(self.clip_tau, (int, float))
                                        or not self.clip_tau > 0):
            raise ConfigError(f"clip_tau must be 'auto' or a positive number (inf: no clipping), got {self.clip_tau!r}")
        if isinstance(self.trim, bool) or not isinstance(self.trim, int) or self.trim < 0:
            raise ConfigError(f"trim must be a non-negative integer, got {self.trim!r}")
        attackers = self.attackers
        if isinstance(attackers, list):
            attackers = tuple(attackers)
            object.__setattr__(self, "attackers", attackers)  # a TOML/JSON list: frozen and hashable
        if isinstance(attackers, tuple):
            if not attackers or any(isinstance(a, bool) or not isinstance(a, int) or a < 0 for a in attackers):
                raise ConfigError(f"attackers must be a count or a non-empty list of node ids (integers >= 0), "
                                  f"got {list(attackers)!r}")
            if len(set(attackers)) != len(attackers):
                raise ConfigError(f"attackers lists a node twice: {list(attackers)!r}")
        elif isinstance(attackers, bool) or not isinstance(attackers, int) or attackers < 0:
            raise ConfigError(f"attackers must be a non-negative count or a list of node ids, got {attackers!r}")
        if (self.attack == "none") != (self.attackers == 0):
            if self.attack == "none":
                raise ConfigError(f"attackers={self.attackers!r} but attack is 'none'; choose what they send: "
                                  f"attack = {', '.join(ATTACKS[1:])}")
            raise ConfigError(f"attack {self.attack!r} needs attackers: a count (e.g. attackers = 1, placed so that "
                              "no honest node has two attacking neighbours) or a list of node ids")
        if self.attack_scale is not None:
            if (isinstance(self.attack_scale, bool) or not isinstance(self.attack_scale, (int, float))
                    or not 0 < self.attack_scale < math.inf):
                raise ConfigError(f"attack_scale must be a positive finite number, got {self.attack_scale!r}")
            if self.attack in ("none", "constant"):
                raise ConfigError(f"attack_scale does not apply to attack {self.attack!r}; leave it unset")
        if self.byzantine and self.algorithm == "centralized":
            raise ConfigError("robust rules and attacks concern gossip between nodes; the centralized reference has "
                              "none — use algorithm dpsgd or consensus, or robust = attack = 'none'")
        if self.byzantine and self.mixing == "dense":
            raise ConfigError("robust rules and attacks run on neighbour lists; use mixing 'auto' or 'sparse'")

    @property
    def byzantine(self) -> bool:
        """Whether the run uses a robust rule or has attackers (the plain kernels serve the rest)."""
        return self.robust != "none" or self.attack != "none"

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-serialisable values."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class GossipOptions:
    """How a networked node gossips: the `[gossip]` table of a topology file, or flags."""

    mode: str = "async"  # async | sync
    gossip_every: int = 1  # local steps between exchanges
    sync_timeout: float = 5.0  # sync mode: longest wait for a neighbour's round
    checkpoint_every: int = 100  # steps between checkpoints
    snapshot_every: int = 10  # steps between parameter sketches (consensus distance afterwards)
    step_interval: float = 0.0  # seconds to pause after each tick (0: as fast as it computes)
    linger: float = 30.0  # after the last step: longest wait for neighbours to finish (mixing meanwhile)
    settle_rounds: int = 10  # exchanges (no training) once every neighbour has finished, before leaving
    peer_timeout: float = 10.0  # stop pushing to a neighbour silent for this long (until it is heard again)
    start_timeout: float = 60.0  # longest wait at start for the links to every neighbour
    threads: str = "auto"  # JAX work in a worker thread: auto (models >= 1M parameters) | always | never

    def __post_init__(self) -> None:
        if self.mode not in GOSSIP_MODES:
            raise ConfigError(f"unknown gossip mode {self.mode!r}; accepted: {', '.join(GOSSIP_MODES)}")
        if self.threads not in THREAD_POLICIES:
            raise ConfigError(f"unknown threads setting {self.threads!r}; accepted: {', '.join(THREAD_POLICIES)}")
        for key in ("gossip_every", "checkpoint_every", "snapshot_every", "settle_rounds"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (key != "settle_rounds"):
                raise ConfigError(f"{key} must be a {'non-negative' if key == 'settle_rounds' else 'positive'} "
                                  f"integer, got {value!r}")
        for key in ("sync_timeout", "step_interval", "linger", "peer_timeout", "start_timeout"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ConfigError(f"{key} must be a non-negative number of seconds, got {value!r}")


def _auto_or_number(text: str, key: str, accepted: str) -> float | str:
    """A flag that takes 'auto' or a number (its range is checked by SimConfig).

    Raises:
      ConfigError: for anything else.
    """
    if text.strip() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{key} must be 'auto' or {accepted}, got {text!r}") from None


def parse_clip_tau(text: str) -> float | str:
    """A --clip-tau flag: 'auto' or a positive number."""
    return _auto_or_number(text, "clip_tau", "a positive number")


def parse_gamma(text: str) -> float | str:
    """A --gamma flag (choco's consensus step): 'auto' or a number in (0, 1]."""
    return _auto_or_number(text, "gamma", "a number in (0, 1]")


def parse_attackers(text: str) -> int | tuple[int, ...]:
    """An --attackers flag: a count ('2') or comma-separated node ids ('0,5,9'; '3,' is the one id 3).

    Raises:
      ConfigError: for anything else.
    """
    try:
        if "," in text:
            return tuple(int(part) for part in text.split(",") if part.strip())
        return int(text)
    except ValueError:
        raise ConfigError(f"attackers must be a count or comma-separated node ids, got {text!r}") from None


def config_keys() -> tuple[str, ...]:
    """The keys a config file (or flag set) may contain."""
    return tuple(f.name for f in dataclasses.fields(SimConfig))


def _check_choice(key: str, value: object, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {key} {value!r}; accepted: {', '.join(accepted)}")


def make_config(values: Mapping[str, Any], *, source: str = "config") -> SimConfig:
    """Builds a `SimConfig` from a mapping, naming any unknown key and the valid ones.

    Raises:
      ConfigError: for unknown keys or invalid values.
    """
    unknown = sorted(set(values) - set(config_keys()))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {source}; "
            f"valid keys: {', '.join(config_keys())}"
        )
    try:
        return SimConfig(**values)
    except ConfigError as e:
        raise ConfigError(f"{e} (in {source})") from None


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SimConfig:
    """Reads a TOML experiment config (flat keys, or under an `[experiment]` table); flags win.

    Raises:
      ConfigError: if the file is missing, is not valid TOML, or has unknown keys/bad values.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory; pass a .toml file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e.strerror}") from None
    if set(raw) == {"experiment"} and isinstance(raw["experiment"], dict):
        raw = raw["experiment"]
    values = {**raw, **(overrides or {})}
    return make_config(values, source=str(path))
