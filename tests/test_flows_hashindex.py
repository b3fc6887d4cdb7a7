"""The vectorised hash map agrees with a dict under random inserts and deletes."""
from __future__ import annotations

import numpy as np

from trafficsnn.flows.hashindex import HashIndex


def test_matches_dict():
    rng = np.random.default_rng(0)
    hi, ref = HashIndex(16), {}
    universe = rng.integers(0, 2**63, 3000).astype(np.uint64)
    universe[:50] = np.arange(50, dtype=np.uint64) * np.uint64(1024)   # same low bits: long probe chains
    for step in range(60):
        cand = np.unique(rng.choice(universe, int(rng.integers(1, 300))))
        new = np.array([h for h in cand.tolist() if h not in ref], dtype=np.uint64)
        slots = rng.integers(0, 10**6, len(new))
        hi.insert(new, slots)
        ref.update(zip(new.tolist(), slots.tolist()))
        if ref and step % 2:
            keys = np.array(list(ref), dtype=np.uint64)
            gone = rng.choice(keys, int(rng.integers(1, len(keys) + 1)), replace=False)
            res, where = hi.lookup(gone)
            assert (res >= 0).all()
            hi.remove_at(where)
            for h in gone.tolist():
                del ref[h]
        q = rng.choice(universe, 500)
        res, _ = hi.lookup(q)
        assert res.tolist() == [ref.get(h, -1) for h in q.tolist()]
        assert len(hi) == len(ref)
        assert hi.used * 2 <= hi.cap
