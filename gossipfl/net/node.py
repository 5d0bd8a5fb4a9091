"""A networked gossip node: one trio nursery, the algorithm's functions, a transport.

The node runs any algorithm of the protocol (`gossipfl.learn.protocol`) through its `Workload`:
`local` steps, then `send` to the out-neighbours of the round, then the combine on its mailbox,
then `merge`; it never names an algorithm. Each tick (async mode) a node mixes in what its
mailbox holds, takes `gossip_every` local steps, pushes its neighbours their shares, and mixes
in what arrived meanwhile. JAX work for models of 1M parameters or more runs in a worker thread
so the event loop keeps serving the network (`threads`).

A linear combine (weighted mean or push-sum) travels as push-sum with running sums (robust
push-sum): node i, holding weight w_i and message m_i (its mass is w_i m_i), keeps, per
neighbour j, the total mass it has ever pushed to j (sigma_ij, message and a scalar weight),
and sends that total. The receiver remembers the last total it absorbed (rho_ij) and adds only
the difference. So the mailbox needs only the newest frame per neighbour; a lost, duplicated or
reordered frame changes nothing once a newer one arrives; and mass is conserved, so the network
average is not biased by asynchrony. A neighbour that is down gets no share: its weight stays
with the node until the link is back, and nobody waits for it. A combine rule (clip, trim)
instead takes the newest message of each neighbour heard from (`_mix_models`).

On a time-varying topology the round's out-neighbours and weights come from the schedule, a
function of the shared seed and the round, so nodes agree without a coordinator. In sync mode a
node waits, up to `sync_timeout`, for the frame of the current round from every in-neighbour
before mixing (a frame of a later round is held back until then); with all links up that is
exactly the simulator's round.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import trio

from gossipfl.config import GossipOptions
from gossipfl.net.nodefiles import NodeFiles, write_checkpoint
from gossipfl.net.nodemetrics import NodeMetrics
from gossipfl.net.transport import Transport
from gossipfl.net.wire import FrameError, Stale, UnknownSender, encode_head, payload_views
from gossipfl.net.workload import Workload

log = logging.getLogger("gossipfl.net.node")

# Below this many parameters a step takes less than a handoff to a worker thread (measured: 4 nodes
# of the 4,810-parameter MLP ran 6x faster inline), so "auto" runs them on the event loop.
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


class Node(NodeFiles, NodeMetrics):
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
        self.peers = sorted(int(j) for j in work.graph.neighbors(node_id))  # everyone it ever talks to
        self.round = 0  # the exchange's round in the topology's schedule
        self.transport = make_transport(node_id, self.peers, work.spec, self.deliver)
        if work.learning:
            self.dataset, self.indices = work.task.node_dataset(node_id, data_file)
            self.lengths = np.array(work.task.lengths)
            self.lengths[node_id] = self.indices.size  # its own data may differ from its share
        # the algorithm's state (flat leaves) and the push-sum weight; running sums of the
        # linear channel out (sigma) and absorbed (rho), in the shapes of the message
        self.state = work.initial_state(node_id)
        self.w = 1.0
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
        self._held: dict[int, Any] = {}  # sync: neighbour -> its newest frame of a later round
        self.resumed_from: int | None = None
        # a combine rule: neighbours send their messages, not push-sum mass (see `_push_model`)
        self.robust = not work.combine.linear
        self.models: dict[int, Any] = {}  # neighbour -> its newest message
        self._prepare_dir(resume)

    # ------------------------------------------------------------------ receiving

    def deliver(self, item: Any) -> None:
        """The transport's callback: a verified frame goes to the mailbox; refusals are counted."""
        if not isinstance(item, FrameError):
            if item.sender not in self.inbound:
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
        previous = self.last_seen.get(item.sender)
        if previous is not None and previous[0] != item.incarnation:
            # the neighbour restarted: its seq numbers, and so its acks of ours, begin again
            self.share_seqs[item.sender], self._sent_ack[item.sender] = [], None
            self.acked.pop(item.sender, None)
        self.last_seen[item.sender] = item.order
        held = self.opts.mode == "sync" and item.step > self.step and self.step < self.cfg.rounds
        box = self._held if held else self.mailbox  # a later round's sums wait until that round
        if item.sender in box:  # overload: the newest frame replaces one not yet absorbed
            inbound["superseded"] += 1
        box[item.sender] = item
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
            if self.work.learning:  # the simulator's minibatches of these steps, for this node
                rounds = np.arange(self.step, self.step + k)
                pick = self.indices[self.work.picks(self.id, rounds, self.lengths)]
                xs, ys = self.dataset.x_train[pick], self.dataset.y_train[pick]
                self.state, loss = await self.run_sync(self.work.local, self.state, rounds, np.int32(self.id), xs, ys)
            self.step += k
            self.round = self.step - 1  # the exchange after local step t is round t, as in the simulator
            self._release_held()
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

        self._release_held()

        async def tick() -> None:
            await trio.sleep(max(self.opts.step_interval, SETTLE_PACE))
            self.round += 1
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
            await self._push_model(final)
            return
        if self.opts.mode == "sync":
            # the frames of the last round must go out before this round's replace them in the
            # one-frame outboxes: a neighbour that got only the later one would take two rounds at once
            with trio.move_on_after(self.opts.sync_timeout):
                await self.transport.drain()
        keep_weight, share_of = self.work.shares(self.id, self.round)
        sharing = [] if final else [j for j in sorted(share_of) if self._pushes_to(j)]
        keep = float(np.float32(keep_weight + sum(s for j, s in share_of.items() if j not in sharing)))
        pushed = sum(share_of[j] for j in sharing)
        shares = {j: share_of[j] * (1.0 - keep) / pushed for j in sharing}
        if sharing:  # the mass pushed is w * message; the node keeps keep * w of it
            mass = await self.run_sync(self.work.send, self.state)
            await self.run_sync(accumulate, [self.sigma[j] for j in sharing], [shares[j] * self.w for j in sharing],
                                mass)
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

    async def _push_model(self, final: bool) -> None:
        """A combine rule: sends every neighbour this node's current message (weight 1, no running
        sums). A Byzantine neighbour could inject any amount of push-sum mass, which no rule can
        bound after the fact; messages can be clipped or trimmed one by one (`_mix_models`)."""
        self.seq += 1
        payload = None
        for j in self.peers:
            if not self.transport.is_up(j) or (j in self._finished and not final):
                continue
            if payload is None:  # one host copy of the message for all neighbours
                message = await self.run_sync(self.work.send, self.state)
                payload = payload_views([np.asarray(a, dtype) for a, dtype in
                                         zip(message, self.work.spec.dtypes, strict=True)])
            head = encode_head(self.work.spec, sender=self.id, incarnation=self.incarnation, seq=self.seq,
                               step=self.step, weight=1.0, final=final, ack=self.absorbed_seq.get(j, 0))
            self.transport.send(j, head, payload)

    async def _mix_models(self, frames: dict[int, Any]) -> None:
        """A combine rule's mixing step (self-centred clipping or a trimmed mean,
        `gossipfl.learn.combine`) over the newest message of every neighbour heard from, so that
        no single neighbour can pull this node further than the rule allows. A neighbour not
        heard from weighs 0, and its weight stays with the node."""
        for j, frame in frames.items():
            self.models[j] = frame.leaves
            self.absorbed_seq[j] = frame.seq
            self.inbound[j]["absorbed"] += 1
        heard = self.work.in_weights(self.id, self.round)
        weights = np.array([heard.get(j, 0.0) if j in self.models else 0.0 for j in self.peers], np.float32)
        zeros = self.work.zeros()
        received = [self.models.get(j, zeros) for j in self.peers]
        self.state = await self.run_sync(self.work.mix_rule, self.state, received, weights)

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
        grown = sum(f.weight - self.rho_w[j] for j, f in frames.items() if j not in rebased)
        self.state = await self.run_sync(self.work.absorb, self.state, np.float32(self.w), np.float32(self.w + grown),
                                         [self.rho[j] for j in self.peers], inbox)
        self.w += grown
        for j, frame in frames.items():
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

    def _release_held(self) -> None:
        """Sync: frames held back for a later round join the mailbox once this node is there."""
        for j in [j for j, f in self._held.items() if f.step <= self.step or self.step >= self.cfg.rounds]:
            if j in self.mailbox:
                self.inbound[j]["superseded"] += 1
            self.mailbox[j] = self._held.pop(j)

    async def _wait_for_round(self) -> None:
        senders = sorted(self.work.in_weights(self.id, self.round))  # who sends here this round

        def waiting() -> list[int]:
            for j in [j for j in senders if j in self._held and j not in self.mailbox]:
                # its frame of this round never came alone (lost or replaced by the next one, whose
                # running sums include it): take the later one rather than wait for nothing
                self.mailbox[j] = self._held.pop(j)
            return [j for j in senders if j not in self._absent and j not in self._finished
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


def accumulate(sums: list[list[np.ndarray]], shares: list[float], x: list[Any]) -> None:
    """sums[k] += shares[k] * x, in place, in float64 (the running sums pushed to each neighbour)."""
    for share, sigma in zip(shares, sums, strict=True):
        for s, a in zip(sigma, x, strict=True):
            s += share * np.asarray(a, np.float64)
