"""Stateful streaming inference: flow updates in, per-flow SNN state advanced, verdicts out.

Each flow owns a row ("slot") of a state slab (the model's ``StreamState``
tensors, grown on demand up to ``max_flows`` rows, least recently used rows
evicted beyond that and counted). An update only advances its flow through
the time steps it *completes*: the packets of the newest, still-open step are
held back as pending events until a later packet (or the flow's end) closes
that step, so feeding a flow in pieces gives exactly the outputs of feeding it
whole. A micro-batch is processed vectorised: one numpy pass builds every
event, flows are grouped by how many steps they advance (``advance`` takes one
step count per call), and one ``logits`` call scores every touched flow.

Verdict policy (``emit``): ``first`` = once, when confidence >= ``min_confidence``
or at flow end, whichever comes first; ``update`` = after every update that
has a verdict; ``final`` = only at flow end.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ModelError
from ..flows.records import FlowKey
from ..wire import REASONS, UPDATE_DTYPE, UpdateBatch
from .sinks import Verdict

log = logging.getLogger(__name__)

EMIT_MODES = ("first", "update", "final")


@dataclass
class ModelHandle:
    """A loaded checkpoint plus what serving needs from it."""

    loaded: Any
    model_id: str
    sha256: str
    classes: list[str]
    bin_s: float
    n_steps: int
    n_inputs: int
    value: str
    temperature: float

    @classmethod
    def load(cls, path: str | Path | None, device: str | torch.device = "cpu") -> "ModelHandle":
        from ..snn.checkpoint import default_model_path, load_checkpoint

        p = Path(path) if path else default_model_path()
        lm = load_checkpoint(p, device=device)
        enc = lm.encoder
        if getattr(enc, "kind", "") != "improved":
            raise ModelError(f"model {p}: its '{getattr(enc, 'kind', '?')}' input encoding cannot stream "
                             "(the daemon needs a model trained with the 'improved' preset's encoding)")
        lm.model.eval()
        spec = lm.spec
        model_id = str(spec.get("name") or spec.get("model_id") or Path(lm.path or p).name or "model")
        return cls(lm, model_id, lm.sha256, list(lm.classes), float(enc.bin_s), int(enc.n_steps),
                   int(enc.n_inputs), str(enc.value), float(getattr(lm, "temperature", 1.0) or 1.0))

    @property
    def model(self) -> Any:
        return self.loaded.model

    def signature(self) -> tuple:
        m = self.model
        return (m.n_inputs, m.n_hidden, m.n_classes, self.bin_s, self.n_steps, self.value)


class StateStore:
    """Per-flow model state rows, grown by doubling up to ``capacity`` rows."""

    def __init__(self, model: Any, capacity: int, initial: int = 1024):
        self.model, self.capacity = model, int(capacity)
        self.rows = 0
        self.state = model.init_state(0)
        self._grow(min(initial, self.capacity))

    def _grow(self, rows: int) -> None:
        rows = min(max(rows, 1), self.capacity)
        if rows <= self.rows:
            return
        extra = self.model.init_state(rows - self.rows)
        self.state = type(self.state)(*(torch.cat([a, b]) for a, b in zip(self.state, extra)))
        self.rows = rows

    def ensure(self, slot: int) -> None:
        if slot >= self.rows:
            self._grow(max(slot + 1, self.rows * 2))

    def reset(self, slots: torch.Tensor) -> None:
        if len(slots):
            self.state.put(slots, self.model.init_state(len(slots)))

    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in self.state)


def _flow_key(r: Any) -> FlowKey:
    return FlowKey(vlan=int(r["vlan"]), proto=int(r["proto"]), client_hi=int(r["client_hi"]),
                   client_lo=int(r["client_lo"]), client_port=int(r["client_port"]),
                   server_hi=int(r["server_hi"]), server_lo=int(r["server_lo"]),
                   server_port=int(r["server_port"]))


class StreamingClassifier:
    """Turns batches of decoded updates into verdicts; owns the per-flow state."""

    def __init__(self, handle: ModelHandle, *, max_flows: int = 250_000, emit: str = "first",
                 min_confidence: float = 0.8, device: str | torch.device = "cpu"):
        if emit not in EMIT_MODES:
            raise ValueError(f"emit must be one of {EMIT_MODES}, got {emit!r}")
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be within [0, 1], got {min_confidence}")
        if max_flows < 1:
            raise ValueError(f"max_flows must be >= 1, got {max_flows}")
        self.emit, self.min_confidence = emit, float(min_confidence)
        self.max_flows = int(max_flows)
        self.device = torch.device(device)
        self.counters: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.verdicts_by_class: Counter[str] = Counter()
        self._set_model(handle)

    # ------------------------------------------------------------- model and state
    def _set_model(self, handle: ModelHandle) -> None:
        self.handle = handle
        self.model = handle.model
        self.store = StateStore(self.model, self.max_flows)
        cap = self.max_flows
        self._index: dict[tuple[str, int], int] = {}
        self._free: list[int] = []
        self._next = 0
        # per-slot scalars
        self.start_ts = np.zeros(0)
        self.steps_done = np.zeros(0, np.int64)
        self.packets = np.zeros(0, np.int64)
        self.emitted = np.zeros(0, bool)
        self.last_used = np.zeros(0, np.int64)
        self.live = np.zeros(0, bool)
        self.rec = np.zeros(0, UPDATE_DTYPE)   # the last update record of each flow (key fields)
        self._tick = 0
        self._cap = cap
        self._keys: dict[int, tuple[str, int]] = {}   # slot -> (sensor, flow id)
        self._pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # slot -> (step, neuron) of the open step

    def swap_model(self, handle: ModelHandle) -> int:
        """Serve ``handle`` from now on; per-flow states made by the old weights are dropped. Returns flows reset."""
        n = int(self.live.sum())
        if n:
            self.counters["state_reset_on_reload"] += n
        self._set_model(handle)
        return n

    def _grow_slots(self, n: int) -> None:
        old = len(self.live)
        if n <= old:
            return
        n = min(max(n, old * 2, 1024), self._cap)
        for name, dt in (("start_ts", np.float64), ("steps_done", np.int64), ("packets", np.int64),
                         ("emitted", bool), ("last_used", np.int64), ("live", bool), ("rec", UPDATE_DTYPE)):
            a = getattr(self, name)
            b = np.zeros(n, dt)
            b[:old] = a
            setattr(self, name, b)

    def _alloc(self) -> int:
        if self._free:
            return self._free.pop()
        if self._next >= self._cap:
            self._evict(max(1, self._cap // 100))
            return self._free.pop()
        s = self._next
        self._next += 1
        self._grow_slots(s + 1)
        self.store.ensure(s)
        return s

    def _evict(self, n: int) -> None:
        """Free the ``n`` least recently used flows (counted; their state is lost)."""
        live = np.flatnonzero(self.live)
        n = min(n, len(live))
        victims = live[np.argpartition(self.last_used[live], n - 1)[:n]] if n < len(live) else live
        self.counters["state_evicted"] += len(victims)
        self._release(victims)

    def _release(self, slots: np.ndarray) -> None:
        for s in slots.tolist():
            kd = self._keys.pop(s, None)
            if kd is not None:
                self._index.pop(kd, None)
            self._pending.pop(s, None)
            self._free.append(s)
        self.live[slots] = False
        self.store.reset(torch.as_tensor(slots, dtype=torch.long))

    @property
    def active_flows(self) -> int:
        return len(self._index)

    # ------------------------------------------------------------- the batch
    def process(self, batches: Sequence[UpdateBatch], now: float | None = None) -> list[Verdict]:
        """Advance every flow of these decoded messages; returns the verdicts the policy emits."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return []
        t_start = time.perf_counter()
        h = self.handle
        # ---- concatenate the messages
        keys = np.concatenate([b.keys for b in batches]) if len(batches) > 1 else batches[0].keys
        sensors: list[str] = []
        for b in batches:
            sensors.extend([b.sensor] * len(b))
        lens = np.concatenate([np.diff(b.offsets) for b in batches])
        ts = np.concatenate([b.ts for b in batches])
        size = np.concatenate([b.size for b in batches])
        direction = np.concatenate([b.direction for b in batches])
        nu = len(keys)
        self.counters["updates"] += nu
        self.counters["packets"] += int(lens.sum())
        self.counters["messages"] += len(batches)

        # ---- slots (the only per-update Python loop)
        fids = keys["flow_id"].tolist()
        seqs = keys["seq"].tolist()
        slots = np.empty(nu, np.int64)
        index = self._index
        new_flows = missing = 0
        self._tick += 1
        tick, last_used = self._tick, self.last_used
        for i in range(nu):
            k = (sensors[i], fids[i])
            s = index.get(k)
            if s is None or seqs[i] == 0:
                if s is not None:  # a restarted sensor reuses flow ids: start over
                    self._release(np.array([s]))
                s = self._alloc()
                index[k] = s
                self._keys[s] = k
                self.live[s] = True
                self.start_ts[s] = keys["start_ts"][i]
                self.steps_done[s] = 0
                self.packets[s] = 0
                self.emitted[s] = False
                if seqs[i] == 0:
                    new_flows += 1
                else:
                    missing += 1
                    self.packets[s] = seqs[i]
                last_used = self.last_used
            last_used[s] = tick
            slots[i] = s
        self.counters["flows"] += new_flows
        if missing:
            self.drops["flow_start_missed"] += missing
        self.rec[slots] = keys
        # gaps: updates lost upstream (sensor drops) show as a seq jump
        seq = keys["seq"].astype(np.int64)
        # (several updates of one flow in a batch: check against the running count)
        exp = self._expected_seq(slots, lens)
        gap = seq - exp
        if (gap > 0).any():
            self.drops["gap_updates"] += int((gap > 0).sum())
            self.drops["gap_packets"] += int(gap[gap > 0].sum())
        last_of = {}
        for i, s in enumerate(slots.tolist()):
            last_of[s] = i
        uslots = np.fromiter(last_of.keys(), np.int64, len(last_of))
        ulast = np.fromiter(last_of.values(), np.int64, len(last_of))
        self.packets[uslots] = seq[ulast] + lens[ulast]
        final_u = keys["final"].astype(bool)
        final_slot = np.zeros(len(self.live), bool)
        final_slot[slots[final_u]] = True

        # ---- events of the new packets
        upd = np.repeat(np.arange(nu), lens)
        pslot = slots[upd]
        rel = ts - self.start_ts[pslot]
        step = np.floor(rel / h.bin_s).astype(np.int64)
        from ..snn.encoding import IMPROVED_BINS_PER_DIRECTION, improved_size_bins

        neuron = direction.astype(np.int64) * IMPROVED_BINS_PER_DIRECTION + improved_size_bins(size)
        # pending events of the touched flows come first (they are older)
        pend = [(s, self._pending.pop(s)) for s in uslots.tolist() if s in self._pending]
        if pend:
            ps = np.concatenate([np.full(len(p[0]), s, np.int64) for s, p in pend])
            pslot = np.concatenate([ps, pslot])
            step = np.concatenate([np.concatenate([p[0] for _, p in pend]), step])
            neuron = np.concatenate([np.concatenate([p[1] for _, p in pend]), neuron])
        # the step each flow may advance to: all steps before its newest packet's, all at its end
        n_steps = h.n_steps
        target = self.steps_done.copy()
        if len(step):
            last_step = np.full(len(self.live), -1, np.int64)
            np.maximum.at(last_step, pslot, step)
            t_open = np.where(final_slot, last_step + 1, last_step)
            np.maximum(target, np.minimum(t_open, n_steps), out=target)
        # a flow that ended has nothing more in its window: run it to the window's end, so its final
        # verdict is the model's output on the whole (zero-padded) window, as in training
        target[final_slot] = n_steps
        done = self.steps_done
        in_window = (step >= done[pslot]) & (step < n_steps)
        self.counters["packets_after_window"] += int((step >= n_steps).sum())
        late = (step < done[pslot]).sum()
        if late:
            self.counters["packets_late"] += int(late)  # out of order across a fed step: ignored
        feed = in_window & (step < target[pslot])
        keep = in_window & ~feed & ~final_slot[pslot]
        if keep.any():
            ks, kst, kn = pslot[keep], step[keep], neuron[keep]
            order = np.argsort(ks, kind="stable")
            ks, kst, kn = ks[order], kst[order], kn[order]
            cut = np.flatnonzero(np.diff(ks)) + 1
            for a, b in zip(np.concatenate([[0], cut]).tolist(), np.concatenate([cut, [len(ks)]]).tolist()):
                self._pending[int(ks[a])] = (kst[a:b], kn[a:b])

        # ---- advance, grouped by step count
        k_of = target[uslots] - done[uslots]
        # advance() takes one step count per call: split each flow's k steps into its binary digits
        # (k = 2^a + 2^b + ...), so a batch needs at most log2(n_steps) + 1 calls whatever its mix
        fs, fst, fn = pslot[feed], step[feed], neuron[feed]
        cursor = done.copy()
        kslot = np.zeros(len(self.live), np.int64)
        kslot[uslots] = k_of
        kev = kslot[fs]
        n_adv = 0
        for bit in range(int(k_of.max()).bit_length() if len(k_of) else 0):
            width = 1 << bit
            grp = np.sort(uslots[(k_of >> bit) & 1 == 1])
            if not len(grp):
                continue
            c_ev = cursor[fs]
            sel = ((kev >> bit) & 1 == 1) & (fst >= c_ev) & (fst < c_ev + width)
            es = fs[sel]
            batch = self._sparse(np.searchsorted(grp, es), fst[sel] - cursor[es], fn[sel], len(grp), width)
            idx = torch.as_tensor(grp, dtype=torch.long, device=self.device)
            st = self.model.advance(self.store.state.index(idx), batch)
            self.store.state.put(idx, st)
            cursor[grp] += width
            n_adv += len(grp)
        self.steps_done[uslots] = target[uslots]
        self.counters["flow_advances"] += n_adv

        # ---- score, apply the policy
        verdicts = self._verdicts(uslots, ulast, keys, sensors, final_slot, batches, now)
        ended = uslots[final_slot[uslots]]
        if len(ended):
            self.counters["flows_ended"] += len(ended)
            self._release(ended)
        self.last_batch_seconds = time.perf_counter() - t_start
        return verdicts

    def _expected_seq(self, slots: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """What seq each update should carry if nothing was lost (running count within the batch)."""
        exp = self.packets[slots].copy()
        if len(np.unique(slots)) != len(slots):
            run: dict[int, int] = {}
            for i, s in enumerate(slots.tolist()):
                exp[i] = run.get(s, int(self.packets[s]))
                run[s] = int(exp[i]) + int(lens[i])
        return exp

    def _sparse(self, sample: np.ndarray, step: np.ndarray, neuron: np.ndarray, n: int, k: int) -> Any:
        from ..snn.encoding import SparseBatch, apply_value_transform

        h = self.handle
        flat = (sample * k + step) * h.n_inputs + neuron
        uniq, counts = np.unique(flat, return_counts=True)
        values = apply_value_transform(counts.astype(np.float64), h.value).astype(np.float32)
        neu = uniq % h.n_inputs
        rest = uniq // h.n_inputs
        t = torch.as_tensor
        return SparseBatch(t(rest // k, device=self.device), t(rest % k, device=self.device),
                           t(neu, device=self.device), t(values, device=self.device), n, k, h.n_inputs)

    def _verdicts(self, uslots: np.ndarray, ulast: np.ndarray, keys: np.ndarray, sensors: list[str],
                  final_slot: np.ndarray, batches: Sequence[UpdateBatch], now: float | None) -> list[Verdict]:
        h = self.handle
        scored = self.steps_done[uslots] > 0
        if not scored.all():
            nos = uslots[~scored & final_slot[uslots]]
            if len(nos):
                self.counters["flows_without_verdict"] += len(nos)  # ended before one complete step
        cand = uslots[scored]
        if not len(cand):
            return []
        is_final = final_slot[cand]
        if self.emit == "final":
            want = is_final
        elif self.emit == "first":
            want = ~self.emitted[cand]
        else:
            want = np.ones(len(cand), bool)
        if not want.any():
            return []
        cand, li, is_final = cand[want], ulast[scored][want], is_final[want]
        idx = torch.as_tensor(cand, dtype=torch.long, device=self.device)
        with torch.no_grad():
            logits = self.model.logits(self.store.state.index(idx)).float()
            probs = torch.softmax(logits / h.temperature, dim=1).cpu().numpy()
        conf = probs.max(1)
        label = probs.argmax(1)
        if self.emit == "first":
            go = (conf >= self.min_confidence) | is_final
        else:
            go = np.ones(len(cand), bool)
        if not go.any():
            return []
        now = time.time() if now is None else now
        out = []
        classes = h.classes
        walls = keys["wall"]
        reasons = keys["reason"]
        steps_seen = self.steps_done
        for j in np.flatnonzero(go).tolist():
            s = int(cand[j])
            i = int(li[j])
            r = keys[i]
            fk = _flow_key(r)
            c = int(label[j])
            w = float(walls[i])
            out.append(Verdict(
                key=fk, flow_id=int(r["flow_id"]), sensor=sensors[i], label=classes[c],
                confidence=float(conf[j]), probabilities=dict(zip(classes, probs[j].tolist())),
                packets=int(self.packets[s]), first_ts=float(self.start_ts[s]), verdict_ts=now,
                model_id=h.model_id, model_sha256=h.sha256, final=bool(is_final[j]),
                reason=REASONS[int(reasons[i])], steps=int(steps_seen[s]),
                latency_s=(now - w) if w > 0 else None))
            self.emitted[s] = True
            self.verdicts_by_class[classes[c]] += 1
        self.counters["verdicts"] += len(out)
        return out

    def flush_open(self, reason: str = "shutdown") -> list[Verdict]:
        """Verdicts for open flows that have not emitted one yet (at shutdown), from the steps seen."""
        live = np.flatnonzero(self.live)
        live = live[(~self.emitted[live]) & (self.steps_done[live] > 0)]
        if not len(live):
            return []
        h = self.handle
        idx = torch.as_tensor(live, dtype=torch.long, device=self.device)
        with torch.no_grad():
            probs = torch.softmax(self.model.logits(self.store.state.index(idx)).float() / h.temperature,
                                  dim=1).cpu().numpy()
        now = time.time()
        out = []
        for j, s in enumerate(live.tolist()):
            sensor, fid = self._keys.get(s, ("", -1))
            c = int(probs[j].argmax())
            out.append(Verdict(key=_flow_key(self.rec[s]), flow_id=int(fid),
                               sensor=sensor, label=h.classes[c], confidence=float(probs[j, c]),
                               probabilities=dict(zip(h.classes, probs[j].tolist())), packets=int(self.packets[s]),
                               first_ts=float(self.start_ts[s]), verdict_ts=now, model_id=h.model_id,
                               model_sha256=h.sha256, final=False, reason=reason, steps=int(self.steps_done[s])))
            self.emitted[s] = True
            self.verdicts_by_class[h.classes[c]] += 1
        self.counters["verdicts"] += len(out)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "drops": dict(self.drops),
            "verdicts_by_class": dict(self.verdicts_by_class),
            "active_flows": self.active_flows,
            "state_bytes": self.store.nbytes(),
        }
