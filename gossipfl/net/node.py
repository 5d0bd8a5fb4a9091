"""A networked gossip node: one trio nursery, JAX training, push-sum over a transport.

Each tick (async mode) a node mixes in what its mailbox holds, takes `gossip_every` local steps,
pushes its neighbours their shares, and mixes in what arrived meanwhile. JAX work for models of
1M parameters or more runs in `trio.to_thread` so the event loop keeps serving the network;
smaller models' steps take less time than a thread handoff and run on the loop (`threads`).

The exchange is push-sum with running sums (robust push-sum): node i keeps, per neighbour j, the
total mass it has ever pushed to j (sigma_ij, parameters and a scalar weight), and sends that
total. The receiver remembers the last total it absorbed (rho_ij) and adds only the difference.
So the mailbox needs only the newest frame per neighbour; a lost, duplicated or reordered frame
changes nothing once a newer one arrives; and mass is conserved, so the network average of the
de-biased models z_i = x_i / w_i is not biased by asynchrony. A neighbour that is down gets no
share: its weight stays with the node until the link is back, and nobody waits for it.

In sync mode a node waits, up to `sync_timeout`, for a frame of the current round from every
neighbour before mixing; with all links up that is exactly the simulator's D-PSGD round.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import trio

from gossipfl.config import GossipOptions
from gossipfl.errors import GossipError, RunDirError
from gossipfl.metrics import finite_or_none, write_json
from gossipfl.net.collect import FINAL_STEP, sketch_dtype
from gossipfl.net.transport import Transport
from gossipfl.net.wire import FrameError, Stale, UnknownSender, encode_head, payload_views
from gossipfl.net.workload import Workload

log = logging.getLogger("gossipfl.net.node")

# Below this many parameters a compiled step takes well under a millisecond, less than handing it
# to a worker thread and back costs (measured: 4 nodes of the 4,810-parameter MLP ran 6x faster
# inline), so "auto" runs such models on the event loop and larger ones in a thread.
THREAD_MIN_PARAMETERS = 1_000_000
MAX_UNACKED = 2  # async: shares in flight per link before a node keeps the next one
SETTLE_PACE = 0.05  # seconds between exchanges while settling
TransportFactory = Callable[[int, list[int], Any, Callable[[Any], None]], Transport]


RunSync = Callable[..., Awaitable[Any]]


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Runs JAX work in a worker thread so the node's event loop keeps serving the network."""
    return await trio.to_thread.run_sync(fn, *args)


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """Runs work on the event loop itself: for small models, and deterministic tests under MockClock."""
    return fn(*args)


class Node:
    """One gossip node. `await node.run()` trains `cfg.rounds` steps, keeps mixing (no training)
    until its neighbours have finished too, says goodbye, and returns its summary."""

    def __init__(self, node_id: int, work: Workload, opts: GossipOptions, key: bytes, out_dir: str | Path,
                 make_transport: TransportFactory, *, data_file: str | None = None, run_sync: RunSync | None = None,
                 resume: bool = True) -> None:
        self.id = node_id
        self.work = work
        self.cfg = work.cfg
        self.opts = opts
        self.key = key
        self.out = Path(out_dir)
        threaded = opts.threads == "always" or (opts.threads == "auto"
                                                 and work.parameters >= THREAD_MIN_PARAMETERS)
        self.run_sync = run_sync or (in_thread if threaded else inline)
        self.keep_weight, self.share_of = work.shares(node_id)
        self.peers = sorted(self.share_of)
        self.transport = make_transport(node_id, self.peers, work.spec, self.deliver)
        self.data = work.node_data(node_id, data_file)
        self.rng = np.random.default_rng([self.cfg.seed, node_id, 7])
        # push-sum state: x (numerator), w (weight); running sums out (sigma) and absorbed (rho)
        self.x = work.initial_params(node_id)  # flat leaves, in the order of work.spec
        self.w = 1.0
        self.opt_state = work.init_opt(self.x)
        zeros = work.zeros()
        self.sigma = {j: [np.zeros(z.shape, np.float64) for z in zeros] for j in self.peers}  # float64 sums
        self.sigma_w = dict.fromkeys(self.peers, 0.0)
        self.rho = {j: list(zeros) for j in self.peers}
        self.rho_w = dict.fromkeys(self.peers, 0.0)
        self.last_seen: dict[int, tuple[int, int]] = {}
        self.mailbox: dict[int, Any] = {}
        self.step = 0
        self.seq = 0
        self.incarnation = time.time_ns() // 1_000_000
        self.rejected: Counter = Counter()
        # per neighbour, what became of the frames that came from it (see `counters`)
        self.inbound: dict[int, Counter] = {j: Counter() for j in self.peers}
        self._arrived = trio.Event()
        self.absorbed_seq: dict[int, int] = {}  # neighbour -> seq of its newest frame absorbed here
        self.rho_inc: dict[int, int] = {}  # neighbour -> the incarnation its absorbed running sum came from
        self.acked: dict[int, int] = {}  # neighbour -> seq of this node's newest frame it has absorbed
        self.share_seqs: dict[int, list[int]] = {j: [] for j in self.peers}  # seqs that carried a share
        self._sent_ack: dict[int, int] = {}
        self._absent: set[int] = set()
        self._finished: set[int] = set()  # neighbours that sent their last frame
        self._heard: dict[int, float] = {}  # neighbour -> when its newest frame arrived (trio time)
        self._peer_step: dict[int, int] = {}  # neighbour -> step of its newest frame
        self.resumed_from: int | None = None
        # robust mode: neighbours send their models, not push-sum mass (see `_push_model`)
        self.robust = work.robust_mix is not None
        self.models: dict[int, Any] = {}  # neighbour -> its newest model
        self._prepare_dir(resume)

    # ------------------------------------------------------------------ receiving

    def deliver(self, item: Any) -> None:
        """The transport's callback: a verified frame goes to the mailbox; refusals are counted."""
        if not isinstance(item, FrameError):
            if item.sender not in self.share_of:
                item = UnknownSender(f"frame from {item.sender}, not a neighbour of node {self.id}")
            elif item.order <= self.last_seen.get(item.sender, (-1, -1)):
                stale = Stale(f"frame {item.order} from {item.sender} is not newer than {self.last_seen[item.sender]}")
                stale.sender, item = item.sender, stale
        if isinstance(item, FrameError):
            self.rejected[item.reason] += 1
            if item.sender in self.inbound:
                self.inbound[item.sender]["received"] += 1
                self.inbound[item.sender]["rejected"] += 1
            if self.rejected[item.reason] in (1, 10, 100) or self.rejected[item.reason] % 1000 == 0:
                log.warning("node %d: %s (%s): %s [%d so far]", self.id, item.what, item.reason, item,
                            self.rejected[item.reason])
            return
        inbound = self.inbound[item.sender]
        inbound["received"] += 1
        if item.sender in self.mailbox:  # overload: the newest frame replaces one not yet absorbed
            inbound["superseded"] += 1
        previous = self.last_seen.get(item.sender)
        if previous is not None and previous[0] != item.incarnation:
            # the neighbour restarted: its seq numbers, and so its acks of ours, begin again
            self.share_seqs[item.sender], self._sent_ack[item.sender] = [], None
            self.acked.pop(item.sender, None)
        self.last_seen[item.sender] = item.order
        self.mailbox[item.sender] = item
        self._heard[item.sender] = trio.current_time()
        self._peer_step[item.sender] = item.step
        self.acked[item.sender] = item.ack
        if item.final:
            self._finished.add(item.sender)
        self._absent.discard(item.sender)
        self._arrived.set()

    # ------------------------------------------------------------------ the node's life

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> dict[str, Any]:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.transport.run)
            task_status.started()
            await self._meet_neighbours()
            start = time.time()
            await self._train()
            await self._settle()
            await self._push(final=True)
            with trio.move_on_after(2.0):  # let the goodbye frames leave whole (and be counted)
                await self.transport.drain()
            summary = await self._finish(time.time() - start)
            nursery.cancel_scope.cancel()
        return summary

    async def _meet_neighbours(self) -> None:
        """Waits (up to `start_timeout`) until a link to every neighbour is up, so that nodes whose
        processes start a few seconds apart do not take their first steps alone."""
        with trio.move_on_after(self.opts.start_timeout):
            while not all(self.transport.is_up(j) for j in self.peers):
                await trio.sleep(0.05)
        missing = [j for j in self.peers if not self.transport.is_up(j)]
        if missing:
            log.warning("node %d: no link to neighbour(s) %s after %.0f s; starting without them", self.id,
                        missing, self.opts.start_timeout)

    async def _train(self) -> None:
        steps = self.cfg.rounds
        if self.step == 0:
            await self._record(loss=None, evaluate=True, sketch=True)
        while self.step < steps:
            k = min(self.opts.gossip_every, steps - self.step)
            loss = None
            if self.opts.mode == "async":
                # mix in what arrived first, so the local steps act on all the mass the node holds
                await self._absorb()
            if self.work.learning:
                pick = self.data.indices[self.rng.integers(0, self.data.indices.size, (k, self.cfg.batch_size))]
                xs, ys = self.data.dataset.x_train[pick], self.data.dataset.y_train[pick]
                self.x, self.opt_state, loss = await self.run_sync(
                    self.work.train, self.x, np.float32(self.w), self.opt_state, xs, ys)
            self.step += k
            if self.opts.mode == "sync":  # the simulator's round: push, wait for the neighbours, mix
                await self._push()
                await self._wait_for_round()
                await self._absorb()
            else:  # push, then mix in what arrived meanwhile, so the node is measured and left mixed
                await self._push()
                await self._absorb()
            last = self.step >= steps
            await self._record(loss=loss, evaluate=last or self.step % self.cfg.eval_every < k,
                               sketch=last or self.step % self.opts.snapshot_every < k)
            if last or self.step % self.opts.checkpoint_every < k:
                await self.run_sync(write_checkpoint, self.out / "checkpoint.npz", self.checkpoint_arrays())
            await trio.sleep(self.opts.step_interval)

    async def _settle(self) -> None:
        """After the last step: keep mixing, without training, while neighbours are still training
        (up to `linger` seconds), then `settle_rounds` more exchanges, so the network ends on a
        common model rather than on whichever local steps each node took last."""

        async def tick() -> None:
            await trio.sleep(max(self.opts.step_interval, SETTLE_PACE))
            await self._absorb()
            await self._push()

        with trio.move_on_after(self.opts.linger):
            while not all(self._peer_done(j) for j in self.peers):
                await tick()
        for _ in range(self.opts.settle_rounds):
            await tick()
        await self._absorb()  # take in the last pushes, push nothing more: the goodbye follows

    def _peer_done(self, j: int) -> bool:
        """Neighbour j has finished training, left, or is unreachable."""
        return (j in self._finished or not self.transport.is_up(j)
                or self._peer_step.get(j, -1) >= self.cfg.rounds)

    async def _push(self, *, final: bool = False) -> None:
        """Adds each neighbour's share of (x, w) to its running sum and sends the sums. A neighbour
        that cannot take a share now (see `_pushes_to`) leaves it with this node. `final`: the
        goodbye, which pushes nothing and tells the neighbours to stop pushing here.

        The running sums are float64 on the host (float32 sums that grow for the whole run would
        drift the network average by ~1e-4 over 1,000 rounds); they go out rounded to the model's
        dtype, which costs one rounding of the newest sum, never an accumulating error. The kept
        fraction is rounded to float32 once and the shares scaled to sum with it to exactly 1, so
        x (float32) and w (float64) are scaled alike."""
        if self.robust:
            self._push_model(final)
            return
        sharing = [] if final else [j for j in self.peers if self._pushes_to(j)]
        keep = float(np.float32(self.keep_weight + sum(self.share_of[j] for j in self.peers if j not in sharing)))
        pushed = sum(self.share_of[j] for j in sharing)
        shares = {j: self.share_of[j] * (1.0 - keep) / pushed for j in sharing}
        if sharing:
            x = self.x
            self.x = await self.run_sync(self.work.scale, x, np.float32(keep))
            await self.run_sync(accumulate, [self.sigma[j] for j in sharing], [shares[j] for j in sharing], x)
        self.seq += 1
        for j in sharing:
            self.sigma_w[j] += shares[j] * self.w
            self.share_seqs[j] = [s for s in self.share_seqs[j] if s > self.acked.get(j, 0)] + [self.seq]
        if sharing:
            self.w *= keep
        for j in self.peers:
            ack = self.absorbed_seq.get(j, 0)
            unacked = any(s > self.acked.get(j, 0) for s in self.share_seqs[j])
            # a frame goes out with new mass, a new ack, the goodbye, or again while earlier mass
            # is unacknowledged (the frame that carried it, or the ack, may have been lost)
            if not self.transport.is_up(j) or not (j in sharing or ack != self._sent_ack.get(j) or final or unacked):
                continue
            head = encode_head(self.work.spec, sender=self.id, incarnation=self.incarnation, seq=self.seq,
                               step=self.step, weight=self.sigma_w[j], final=final, ack=ack)
            payload = [np.asarray(a, dtype) for a, dtype in zip(self.sigma[j], self.work.spec.dtypes, strict=True)]
            if self.transport.send(j, head, payload_views(payload)):
                self._sent_ack[j] = ack

    def _push_model(self, final: bool) -> None:
        """Robust mode: sends every neighbour this node's current model (weight 1, no running
        sums). A Byzantine neighbour could inject any amount of push-sum mass, which no rule can
        bound after the fact; models can be clipped or trimmed one by one (`_mix_models`)."""
        self.seq += 1
        payload = None
        for j in self.peers:
            if not self.transport.is_up(j) or (j in self._finished and not final):
                continue
            if payload is None:  # one host copy of the model for all neighbours
                payload = payload_views([np.asarray(a, dtype) for a, dtype in
                                         zip(self.x, self.work.spec.dtypes, strict=True)])
            head = encode_head(self.work.spec, sender=self.id, incarnation=self.incarnation, seq=self.seq,
                               step=self.step, weight=1.0, final=final, ack=self.absorbed_seq.get(j, 0))
            self.transport.send(j, head, payload)

    async def _mix_models(self, frames: dict[int, Any]) -> None:
        """Robust mode's mixing step: the configured rule (self-centred clipping or a trimmed
        mean, `gossipfl.learn.robust`) over the newest model of every neighbour heard from, so that no
        single neighbour can pull this node further than the rule allows."""
        for j, frame in frames.items():
            self.models[j] = frame.leaves
            self.absorbed_seq[j] = frame.seq
            self.inbound[j]["absorbed"] += 1
        weights = np.array([self.work.W[self.id, j] if j in self.models else 0.0 for j in self.peers], np.float32)
        models = [self.models.get(j, self.x) for j in self.peers]
        self.x = await self.run_sync(self.work.robust_mix, self.x, models, weights)

    async def _absorb(self) -> None:
        """The mixing step: adds what each neighbour's running sum grew by since last time.

        A neighbour that restarted from a checkpoint sends running sums that may be behind what
        was already absorbed from it; its first frame is taken as the new base (nothing absorbed)
        rather than as a negative push, which could drive weights to zero or below. The mass it
        pushed between its checkpoint and its crash then counts twice; the network still reaches
        consensus, on a slightly shifted average."""
        frames, self.mailbox = self.mailbox, {}
        if not frames:
            return
        if self.robust:
            await self._mix_models(frames)
            return
        rebased = {j for j, f in frames.items() if self.rho_inc.get(j, f.incarnation) != f.incarnation}
        inbox = [frames[j].leaves if j in frames and j not in rebased else self.rho[j] for j in self.peers]
        self.x = await self.run_sync(self.work.absorb, self.x, [self.rho[j] for j in self.peers], inbox)
        for j, frame in frames.items():
            if j not in rebased:
                self.w += frame.weight - self.rho_w[j]
            self.rho[j], self.rho_w[j], self.rho_inc[j] = frame.leaves, frame.weight, frame.incarnation
            self.absorbed_seq[j] = frame.seq
            self.inbound[j]["absorbed"] += 1

    def _pushes_to(self, j: int) -> bool:
        """Whether neighbour j takes a share now: its link is up; it has not finished; it is not
        silent for longer than `peer_timeout`; (async) it has absorbed all but at most
        `MAX_UNACKED - 1` of the shares already pushed to it, so a slow neighbour is not flooded
        with this node's mass; and this node's weight is not so small that its float32 numerator
        would head for underflow (it recovers as neighbours push back)."""
        if not self.transport.is_up(j) or j in self._finished or self.w < 1e-6:
            return False
        if self.opts.mode == "async" or self.step >= self.cfg.rounds:  # flow control (sync: while settling)
            unacked = sum(1 for s in self.share_seqs[j] if s > self.acked.get(j, 0))
            if unacked >= MAX_UNACKED:
                return False
        heard = self._heard.get(j)
        return heard is None or trio.current_time() - heard < self.opts.peer_timeout

    async def _wait_for_round(self) -> None:
        def waiting() -> list[int]:
            return [j for j in self.peers if j not in self._absent and j not in self._finished
                    and not (j in self.mailbox and self.mailbox[j].step >= self.step)]

        with trio.move_on_after(self.opts.sync_timeout):
            while waiting():
                self._arrived = trio.Event()
                await self._arrived.wait()
        late = waiting()
        if late:
            log.warning("node %d: no round-%d frame from %s within %.1f s; not waiting for them until they "
                        "send again", self.id, self.step, late, self.opts.sync_timeout)
            self._absent.update(late)

    # ------------------------------------------------------------------ metrics

    def model(self) -> Any:
        """The de-biased model z = x / w this node would deploy."""
        return [np.asarray(a) / self.w for a in self.x]

    @property
    def accepted(self) -> int:
        """Frames taken into the mailbox (every one came from a neighbour, so `inbound` has it)."""
        return sum(c["received"] - c["rejected"] for c in self.inbound.values())

    def counters(self, *, links: bool = False) -> dict[str, Any]:
        """Frame counters for metrics. With `links`, per neighbour j (key str(j)):

        - frames for j: `queued` = `written` + `dropped` (+ at most 2 waiting or being written
          while the node runs; none once it has stopped), see `transport.PeerCounts`;
        - frames from j: `received` = `accepted` + `rejected`, and `accepted` = `absorbed` +
          `superseded` (replaced in the mailbox by a newer frame before it was mixed in, or left
          there when the node stopped) + at most 1 waiting in the mailbox.

        Across a link, what j wrote to this node and what this node received from j differ only
        by frames in flight when the link broke or a node stopped. Refusals that cannot be pinned
        on a neighbour (bad tag, broken framing, an unknown sender) are `rejected_unattributed`;
        `rejected` counts every refusal by reason."""
        stats = self.transport.stats
        out = {"frames_sent": stats.frames_sent, "bytes_sent": stats.bytes_sent,
               "frames_accepted": self.accepted, "bytes_received": stats.bytes_received,
               "frames_replaced": stats.replaced, "rejected": dict(self.rejected)}
        if links:
            table = {}
            for j in self.peers:
                sent, got = stats.peer(j), self.inbound[j]
                table[str(j)] = {"queued": sent.queued, "written": sent.written, "dropped": sent.dropped,
                                 "received": got["received"], "accepted": got["received"] - got["rejected"],
                                 "rejected": got["rejected"], "absorbed": got["absorbed"],
                                 "superseded": got["superseded"]}
            out["links"] = table
            attributed = sum(g["rejected"] for g in self.inbound.values())
            out["rejected_unattributed"] = sum(self.rejected.values()) - attributed
            out["connections_refused"] = stats.connections_refused
            out["connections_evicted"] = stats.connections_evicted
        return out

    async def _record(self, *, loss: Any, evaluate: bool, sketch: bool) -> None:
        record: dict[str, Any] = {"step": self.step, "time": time.time(), "w": self.w,
                                  **self.counters(links=evaluate)}
        if loss is not None:
            record["loss"] = float(loss)
        evaluate = evaluate and self.work.evaluate is not None
        model = self.model() if evaluate or sketch else None  # a host copy: not on every step
        if evaluate:
            test_loss, acc = await self.run_sync(
                self.work.evaluate, model, self.work.dataset.x_test, self.work.dataset.y_test)
            record.update(test_loss=float(test_loss), accuracy=float(acc))
        self._log(record)
        if sketch:
            await self._write_sketch(self.step, record["time"], model)

    async def _write_sketch(self, step: int, when: float, model: list[np.ndarray]) -> None:
        vec = await self.run_sync(self.work.sketch, model)
        row = np.zeros(1, sketch_dtype(self.work.sketch.dim))
        row["step"], row["time"], row["v"] = step, when, vec
        self._sketches.write(row.tobytes())

    async def _finish(self, seconds: float) -> dict[str, Any]:
        for j in self.mailbox:  # frames that came too late to be mixed in
            self.inbound[j]["superseded"] += 1
        self.mailbox = {}
        model = self.model()
        await self._write_sketch(FINAL_STEP, time.time(), model)  # the model it leaves with, after settling
        await self.run_sync(write_checkpoint, self.out / "final.npz",
                            {f"z/{i}": a for i, a in enumerate(model)})
        summary = {"id": self.id, "steps": self.step, "wall_seconds": seconds, "w": self.w,
                   "resumed_from": self.resumed_from, "tls": self.transport.tls, **self.counters(links=True)}
        if self.work.evaluate is not None:
            test_loss, acc = await self.run_sync(
                self.work.evaluate, model, self.work.dataset.x_test, self.work.dataset.y_test)
            summary.update(accuracy=float(acc), test_loss=float(test_loss))
        write_json(self.out / "summary.json", summary)
        os.close(self._metrics)
        self._sketches.close()
        return summary

    # ------------------------------------------------------------------ files and checkpoints

    def _prepare_dir(self, resume: bool) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create node directory {str(self.out)!r}: {e.strerror or e}") from None
        ckpt = self.out / "checkpoint.npz"
        if resume and ckpt.exists():
            self.restore(ckpt)
        else:
            for stale in ("metrics.jsonl", "sketch.bin", "summary.json", "final.npz", "checkpoint.npz",
                          "checkpoint.npz.tmp"):
                (self.out / stale).unlink(missing_ok=True)
        write_json(self.out / "node.json", {
            "id": self.id, "peers": self.peers, "sketch_dim": self.work.sketch.dim,
            "parameters": self.work.parameters, "config": self.cfg.to_dict(), "gossip": asdict(self.opts),
            "tls": self.transport.tls,
        })
        if self.resumed_from is not None:
            # What was logged after the checkpoint describes steps that are redone now, and a
            # killed writer may have left half a line or half a sketch row: cut both off, so the
            # logs read as one run whose step never goes back.
            _cut_jsonl_after(self.out / "metrics.jsonl", self.step)
            _cut_sketches_after(self.out / "sketch.bin", self.step, sketch_dtype(self.work.sketch.dim))
        # Each record goes out in one write() to an O_APPEND file: nothing buffered is lost on a
        # crash, and records of a killed node end whole (short of the disk filling up).
        self._metrics = os.open(self.out / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._sketches = (self.out / "sketch.bin").open("ab", buffering=0)
        if self.resumed_from is not None:
            self._log({"step": self.step, "time": time.time(), "event": "resumed"})

    def _log(self, record: dict[str, Any]) -> None:
        os.write(self._metrics, (json.dumps(finite_or_none(record), allow_nan=False) + "\n").encode())

    def checkpoint_arrays(self) -> dict[str, np.ndarray]:
        """The node's whole state as named arrays, taken on the event loop (so no frame arriving
        meanwhile can change it half-way); `write_checkpoint` then writes it in a thread."""
        arrays: dict[str, np.ndarray] = {}
        for i, a in enumerate(self.x):
            arrays[f"x/{i}"] = np.asarray(a)
        for i, a in enumerate(self.opt_state):
            arrays[f"opt/{i}"] = np.asarray(a)
        for j in self.peers:
            for i, a in enumerate(self.sigma[j]):
                arrays[f"sigma/{j}/{i}"] = np.array(a)  # a copy: the sums are updated in place
            for i, a in enumerate(self.rho[j]):
                arrays[f"rho/{j}/{i}"] = np.asarray(a)
        meta = {"step": self.step, "seq": self.seq, "w": self.w, "sigma_w": self.sigma_w, "rho_w": self.rho_w,
                "last_seen": {str(k): list(v) for k, v in self.last_seen.items()},
                "rho_inc": {str(k): v for k, v in self.rho_inc.items()}, "incarnation": self.incarnation,
                "link": {k: getattr(self.transport.stats, k) for k in _LINK_COUNTERS},
                "rejected": dict(self.rejected), "rng": self.rng.bit_generator.state,
                "peer_out": {str(j): asdict(self.transport.stats.peer(j)) for j in self.peers},
                "peer_in": {str(j): dict(self.inbound[j]) for j in self.peers}}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        return arrays

    def restore(self, path: Path) -> None:
        """Loads a checkpoint written by `checkpoint` (never a partial one: those are never renamed)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(arrays.pop("meta").tobytes())
            n_leaves = len(self.work.spec.shapes)

            def leaves(prefix: str, count: int) -> list[np.ndarray]:
                return [arrays[f"{prefix}/{i}"] for i in range(count)]

            x = leaves("x", n_leaves)
            if [a.shape for a in x] != list(self.work.spec.shapes):
                raise GossipError("its parameter shapes differ from this model's")
            self.x = [jnp.asarray(a) for a in x]
            self.opt_state = [jnp.asarray(a) for a in leaves("opt", len(self.opt_state))]
            for j in self.peers:
                self.sigma[j] = [np.array(a, np.float64) for a in leaves(f"sigma/{j}", n_leaves)]
                self.rho[j] = leaves(f"rho/{j}", n_leaves)
            self.step, self.seq, self.w = int(meta["step"]), int(meta["seq"]), float(meta["w"])
            self.sigma_w = {int(k): float(v) for k, v in meta["sigma_w"].items()}
            self.rho_w = {int(k): float(v) for k, v in meta["rho_w"].items()}
            self.last_seen = {int(k): tuple(v) for k, v in meta["last_seen"].items()}
            self.rho_inc = {int(k): int(v) for k, v in meta["rho_inc"].items()}
            # newer than any incarnation before, even if the wall clock stepped back
            self.incarnation = max(self.incarnation, int(meta["incarnation"]) + 1)
            for k in _LINK_COUNTERS:  # the counters go on from where they were
                setattr(self.transport.stats, k, int(meta["link"][k]))
            self.rejected = Counter(meta["rejected"])
            for j in self.peers:  # frames queued before the crash and not written count as dropped
                queued, written = (int(meta["peer_out"][str(j)][k]) for k in ("queued", "written"))
                counts = self.transport.stats.peer(j)
                counts.queued, counts.written, counts.dropped = queued, written, queued - written
                self.inbound[j] = Counter({k: int(v) for k, v in meta["peer_in"][str(j)].items()})
            self.rng.bit_generator.state = meta["rng"]
        except Exception as e:  # a damaged file fails in many ways (zip, npy, JSON, types)
            raise RunDirError(f"cannot resume node {self.id} from {path}: {e}; delete it (or pass --fresh) "
                              "to start this node over") from None
        self.resumed_from = self.step
        log.info("node %d: resumed from its checkpoint at step %d", self.id, self.step)


_LINK_COUNTERS = ("frames_sent", "bytes_sent", "frames_received", "bytes_received", "replaced", "send_failures")


def accumulate(sums: list[list[np.ndarray]], shares: list[float], x: list[Any]) -> None:
    """sums[k] += shares[k] * x, in place, in float64 (the running sums pushed to each neighbour)."""
    for share, sigma in zip(shares, sums, strict=True):
        for s, a in zip(sigma, x, strict=True):
            s += share * np.asarray(a, np.float64)


def write_checkpoint(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes a checkpoint atomically: to a temporary file, synced, then renamed over the old one,
    so a crash mid-write leaves the previous checkpoint, never a partial one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cut_jsonl_after(path: Path, step: int) -> None:
    """Cuts a node's metrics.jsonl at its first torn line or record past `step`."""
    if not path.exists():
        return
    data = path.read_bytes()
    keep = 0
    for line in data.splitlines(keepends=True):
        try:
            record = json.loads(line)
            whole = line.endswith(b"\n") and isinstance(record, dict)
        except ValueError:
            whole = False
        if not whole or (isinstance(record.get("step"), int) and record["step"] > step):
            break
        keep += len(line)
    if keep != len(data):
        os.truncate(path, keep)


def _cut_sketches_after(path: Path, step: int, dtype: np.dtype) -> None:
    """Cuts a node's sketch.bin at its first torn row or row past `step`."""
    if not path.exists():
        return
    size = path.stat().st_size
    rows = np.fromfile(path, dtype, count=size // dtype.itemsize)
    past = np.flatnonzero(rows["step"] > step)
    keep = (int(past[0]) if past.size else rows.size) * dtype.itemsize
    if keep != size:
        os.truncate(path, keep)
