"""What a node reports: its model, frame counters, metrics records, sketches and final summary
(`NodeMetrics` is mixed into `gossipfl.net.node.Node`, whose attributes it reads)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from gossipfl.metrics import write_json
from gossipfl.net.collect import FINAL_STEP, sketch_dtype
from gossipfl.net.nodefiles import write_checkpoint


class NodeMetrics:
    """The reporting side of a node."""

    def model(self) -> Any:
        """The model this node would deploy (push-sum's de-biased one: the state holds it)."""
        return [np.asarray(a) for a in self.work.model(self.state)]

    @property
    def x(self) -> list[np.ndarray]:
        """The push-sum mass this node holds: w times its message."""
        return [self.w * np.asarray(a, np.float64) for a in self.work.send(self.state)]

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
                self.work.evaluate, model, self.dataset.x_test, self.dataset.y_test)
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
        for j in [*self.mailbox, *self._held]:  # frames that came too late to be mixed in
            self.inbound[j]["superseded"] += 1
        self.mailbox, self._held = {}, {}
        model = self.model()
        await self._write_sketch(FINAL_STEP, time.time(), model)  # the model it leaves with, after settling
        await self.run_sync(write_checkpoint, self.out / "final.npz",
                            {f"z/{i}": a for i, a in enumerate(model)})
        summary = {"id": self.id, "steps": self.step, "wall_seconds": seconds, "w": self.w,
                   "resumed_from": self.resumed_from, "tls": self.transport.tls, **self.counters(links=True)}
        if self.work.evaluate is not None:
            test_loss, acc = await self.run_sync(
                self.work.evaluate, model, self.dataset.x_test, self.dataset.y_test)
            summary.update(accuracy=float(acc), test_loss=float(test_loss))
        write_json(self.out / "summary.json", summary)
        os.close(self._metrics)
        self._sketches.close()
        return summary


