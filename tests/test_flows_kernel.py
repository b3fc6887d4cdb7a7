"""The flow table's C kernel gives exactly the flows of the numpy path (the reference).

Every field of every flow (key columns, counters, end reason, packet arrays) and their
order, on hypothesis-generated packet sequences (timeouts, FIN/RST, idle gaps, LRU
evictions, IPv6, timestamps going back, forced hash collisions) and on the real nDPI
captures; and the numpy fallback when no compiler can be found.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trafficsnn.flows import Columnar, EveryK, FlowTable, table_kernel
from trafficsnn.packets.batch import PacketBatch

needs_c = pytest.mark.skipif(table_kernel.library() is None, reason="no C compiler: the kernel cannot be built")

FLAGS = [0x10, 0x10, 0x18, 0x02, 0x12, 0x11, 0x01, 0x04, 0x14, 0x00]
# endpoints: IPv4-mapped and IPv6 addresses, a few ports, so keys repeat and collide in both directions
ADDRS = [(0, 0xFFFF_0A00_0001), (0, 0xFFFF_0A00_0002), (0x2001_0DB8_0000_0000, 1), (0x2001_0DB8_0000_0000, 2)]
PORTS = [0, 53, 443, 50000]


@st.composite
def packet_runs(draw):
    """A capture as PacketBatches: packets over a handful of keys, gaps of every size, cut anywhere."""
    n = draw(st.integers(1, 160))
    ints = st.integers
    keys = draw(st.lists(st.tuples(ints(0, 3), ints(0, 3), ints(0, 3), ints(0, 3), ints(0, 2), ints(0, 1)),
                         min_size=1, max_size=6))
    rows = draw(st.lists(st.tuples(ints(0, len(keys) - 1), st.booleans(), ints(0, len(FLAGS) - 1), ints(0, 7),
                                   ints(40, 1500)), min_size=n, max_size=n))
    gaps = np.array([[0.0, 0.01, 0.3, 0.5, 1.0, 2.5, 150.0, -0.5][g] for _, _, _, g, _ in rows])
    ts = 1000.0 + np.cumsum(gaps)
    ki, rev, fl, _, ln = (np.array(c) for c in zip(*rows))
    k = np.array(keys)[ki]
    sa, da, sp, dp = (np.where(rev, k[:, j ^ 1], k[:, j]) for j in (0, 1, 2, 3))
    pr, vl = k[:, 4], k[:, 5]
    proto = np.array([6, 17, 1])[pr]
    port_ok = proto != 1
    addr = np.array(ADDRS, dtype=np.uint64)
    cols = dict(ts=ts, src_hi=addr[sa, 0], src_lo=addr[sa, 1], dst_hi=addr[da, 0], dst_lo=addr[da, 1],
                sport=np.array(PORTS)[sp] * port_ok, dport=np.array(PORTS)[dp] * port_ok, proto=proto,
                ip_len=ln, wire_len=ln + 14, tcp_flags=np.array(FLAGS)[fl] * (proto == 6), vlan=vl,
                ip_version=np.where(addr[sa, 0] == 0, 4, 6))
    whole = PacketBatch.from_columns(**cols)
    cuts = sorted(set(draw(st.lists(ints(1, max(1, n - 1)), max_size=4))) | {n})
    out, a = [], 0
    for c in cuts:
        out.append(whole.take(np.arange(a, c)))
        a = c
    return out


OPTS = st.fixed_dictionaries({
    "idle_timeout": st.sampled_from([None, 0.5, 2.0]),
    "active_timeout": st.sampled_from([None, 3.0, 20.0]),
    "tcp_close": st.booleans(),
    "fin_grace": st.sampled_from([0.0, 0.2, 2.0]),
    "max_flows": st.sampled_from([None, 1, 2, 5]),
    "max_packets": st.sampled_from([None, 1, 3]),
})


def _run(kernel: str, batches, opts: dict, policy, advance: float | None = None):
    t = FlowTable(policy=policy, kernel=kernel, **opts)
    out = []
    for b in batches:
        out.append(t.add(b))
    if advance is not None:
        out.append(t.advance(float(batches[-1].ts.max()) + advance))
    out.append(t.flush())
    stats = dict(t.stats)
    stats.pop("hash_collisions")          # the numpy path's sort fallback; the kernel has none
    return out, stats, len(t)


def _blocks(res) -> list:
    """Columnar output as plain lists, batch by batch (so order and batch of emission count too)."""
    return [[{k: v.tolist() for k, v in blk.columns.items()} for blk in step] for step in res]


def _updates(res) -> list:
    return [[(u.flow_id, u.key, u.start_ts, u.seq, u.ts.tolist(), u.size.tolist(), u.direction.tolist(),
              u.final, u.reason, u.wire_bytes, u.tcp_flags.tolist()) for u in step] for step in res]


@needs_c
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet_runs(), OPTS)
def test_kernel_matches_numpy_columnar(batches, opts):
    a, sa, la = _run("numpy", batches, opts, Columnar())
    b, sb, lb = _run("c", batches, opts, Columnar())
    assert _blocks(a) == _blocks(b)
    assert sa == sb and la == lb == 0


@needs_c
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet_runs(), OPTS, st.integers(1, 4), st.sampled_from([None, 0.7]), st.sampled_from([None, 1.0, 500.0]))
def test_kernel_matches_numpy_every_k(batches, opts, k, window, advance):
    a, sa, _ = _run("numpy", batches, opts, EveryK(k, window), advance)
    b, sb, _ = _run("c", batches, opts, EveryK(k, window), advance)
    assert _updates(a) == _updates(b)
    assert sa == sb


@needs_c
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet_runs(), OPTS)
def test_kernel_hash_collisions(batches, opts):
    """Every key on one of 2 hash values: the kernel's full-key check keeps flows apart."""
    a, sa, _ = _run("numpy", batches, opts, Columnar())
    old = table_kernel.HASH_MASK
    table_kernel.HASH_MASK = 0x1
    try:
        b, sb, _ = _run("c", batches, opts, Columnar())
    finally:
        table_kernel.HASH_MASK = old
    assert _blocks(a) == _blocks(b)
    assert sa == sb


@needs_c
@pytest.mark.shared_data
def test_kernel_matches_numpy_on_ndpi_captures(ndpi_dev):
    from trafficsnn.packets import read_packets

    pcaps = sorted((ndpi_dev / "pcap").iterdir())
    assert pcaps
    for opts in ({}, {"idle_timeout": None, "active_timeout": None, "tcp_close": False, "max_flows": None},
                 {"idle_timeout": 5.0, "active_timeout": 30.0, "max_flows": 50, "max_packets": 20}):
        for p in pcaps:
            batches = [b for b in read_packets(p, batch_size=4096) if len(b)]
            if not batches:
                continue
            a, sa, _ = _run("numpy", batches, opts, Columnar())
            b, sb, _ = _run("c", batches, opts, Columnar())
            assert _blocks(a) == _blocks(b), (p.name, opts)
            assert sa == sb, (p.name, opts)


def test_no_compiler_falls_back_to_numpy_and_says_so_once(monkeypatch, tmp_path, request):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("TRAFFICSNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TRAFFICSNN_FLOWS_KERNEL", raising=False)
    table_kernel.KERNEL.reset()
    request.addfinalizer(table_kernel.KERNEL.reset)      # later tests build it with the real compiler
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables = [FlowTable() for _ in range(3)]
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "numpy flow table" in msgs[0] and "no-such-cc" in msgs[0]
    assert all(t.kernel == "numpy" for t in tables)
    with pytest.raises(RuntimeError, match="C compiler"):
        FlowTable(kernel="c")
    monkeypatch.setenv("TRAFFICSNN_FLOWS_KERNEL", "c")
    with pytest.raises(RuntimeError, match="TRAFFICSNN_FLOWS_KERNEL"):
        FlowTable()


def test_kernel_choice_is_validated(monkeypatch):
    monkeypatch.setenv("TRAFFICSNN_FLOWS_KERNEL", "fortran")
    with pytest.raises(ValueError, match="TRAFFICSNN_FLOWS_KERNEL"):
        FlowTable()
    monkeypatch.setenv("TRAFFICSNN_FLOWS_KERNEL", "numpy")
    assert FlowTable().kernel == "numpy"


def test_cache_others_can_write_is_refused(monkeypatch, tmp_path):
    from trafficsnn import _native

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)                       # a folder any user could plant a library in
    monkeypatch.setenv("TRAFFICSNN_CACHE", str(shared))
    with pytest.raises(_native.NativeUnavailable, match="other users can write"):
        _native.build("probe", "int f(void) { return 1; }")
    private = tmp_path / "private"
    monkeypatch.setenv("TRAFFICSNN_CACHE", str(private))
    if _native.compiler() is None:
        pytest.skip("no C compiler")
    lib = _native.build("probe", "int f(void) { return 7; }")
    assert lib.f() == 7
    so = next((private / "kernels").glob("probe_*.so"))
    so.chmod(0o666)                           # a library others could have rewritten: never loaded
    with pytest.raises(_native.NativeUnavailable, match="refusing to load"):
        _native.build("probe", "int f(void) { return 7; }")


@needs_c
@pytest.mark.parametrize("policy", ["columnar", "every_k"])
def test_kernel_matches_numpy_at_scale_with_compaction(policy):
    """400k packets over 3k keys in 20k-packet batches: store compaction, timeouts and the LRU cap
    all run many times; both paths emit the same flows in the same batches."""
    from test_flows_helpers import random_batch

    rng = np.random.default_rng(5)
    batches, t0 = [], 0.0
    for _ in range(20 if policy == "columnar" else 8):
        b = random_batch(rng, 20_000, n_keys=3_000, t0=t0, rate=2_000.0, tcp_close=True)
        batches.append(b)
        t0 = float(b.ts[-1])
    opts = dict(idle_timeout=2.0, active_timeout=6.0, max_flows=2_000)
    mk = (lambda: Columnar()) if policy == "columnar" else (lambda: EveryK(8, 0.5))
    tables = {k: FlowTable(policy=mk(), kernel=k, **opts) for k in ("numpy", "c")}
    res, sizes = {}, []
    for k, t in tables.items():
        res[k] = []
        for b in batches:
            res[k].append(t.add(b))
            sizes.append(t._store.n)
        res[k].append(t.flush())
    assert any(b < a for a, b in zip(sizes, sizes[1:len(batches)]))     # the store was compacted
    conv = _blocks if policy == "columnar" else _updates
    assert conv(res["numpy"]) == conv(res["c"])
    sa, sb = (dict(t.stats) for t in tables.values())
    sa.pop("hash_collisions"), sb.pop("hash_collisions")
    assert sa == sb and sa["evicted"] > 0 and sa["ended"]["fin"] > 0


def _rst_after_idle(n: int, t: float, flags: int) -> PacketBatch:
    i = np.arange(n, dtype=np.uint64)
    return PacketBatch.from_columns(
        ts=np.full(n, t), src_hi=np.zeros(n), src_lo=0xFFFF0A000000 + i, dst_hi=np.zeros(n),
        dst_lo=np.full(n, 0xFFFF0B000001), sport=np.full(n, 40000), dport=np.full(n, 443), proto=np.full(n, 6),
        ip_len=np.full(n, 60), wire_len=np.full(n, 74), tcp_flags=np.full(n, flags), vlan=np.zeros(n),
        ip_version=np.full(n, 4))


@needs_c
def test_every_packet_ending_two_flows_is_handled():
    """Each packet of the second batch ends its key's idle flow *and* (RST) the flow it opens: 2 ends per
    packet (the kernel's end list once had room for one per packet: a heap overflow on crafted input)."""
    n = 3000
    res = {}
    for kernel in ("numpy", "c"):
        t = FlowTable(kernel=kernel, idle_timeout=120.0)
        t.add(_rst_after_idle(n, 0.0, 0x10))
        ended = t.add(_rst_after_idle(n, 200.0, 0x04))
        res[kernel] = sorted((f.flow_id, f.end_reason, len(f.ts)) for f in ended)
        assert len(t) == 0 and t.live_flows == 0 and not t.flush()
    assert len(res["c"]) == 2 * n
    assert res["c"] == res["numpy"]


@needs_c
def test_cache_is_private_under_umask_002_and_symlinks_cannot_redirect_it(monkeypatch, tmp_path):
    """The default cache made under umask 002 (user-private groups) is usable: each folder made 0700;
    a cache reached through a symlink is checked where it really is."""
    import os

    from trafficsnn import _native

    monkeypatch.delenv("TRAFFICSNN_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir(mode=0o700)
    old = os.umask(0o002)
    try:
        lib = _native.build("probe", "int f(void) { return 3; }")
    finally:
        os.umask(old)
    assert lib.f() == 3
    for p in (tmp_path / "home" / ".cache", tmp_path / "home" / ".cache" / "trafficsnn"):
        assert (p.stat().st_mode & 0o777) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "c").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(shared / "c")     # looks private, lies in a folder anyone can write
    monkeypatch.setenv("TRAFFICSNN_CACHE", str(tmp_path / "link"))
    with pytest.raises(_native.NativeUnavailable, match="other users can write"):
        _native.build("probe", "int f(void) { return 3; }")


@needs_c
def test_temp_fallback_refuses_a_planted_symlink_and_a_damaged_library_is_rebuilt(monkeypatch, tmp_path):
    import os
    import tempfile

    from trafficsnn import _native

    monkeypatch.delenv("TRAFFICSNN_CACHE", raising=False)
    home = tmp_path / "ro-home"
    home.mkdir(mode=0o500)                            # read-only home: the temp fallback is used
    monkeypatch.setenv("HOME", str(home))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp))
    planted = tmp_path / "attacker"
    planted.mkdir(mode=0o700)
    fallback = tmp / f"trafficsnn-kernels-{os.geteuid()}"
    fallback.symlink_to(planted)
    if os.geteuid() == 0:                             # root may write a 0500 home: make it really fail
        monkeypatch.setattr(_native, "_mkdirs_private", lambda d: (_ for _ in ()).throw(PermissionError(13, "ro")))
    with pytest.raises((_native.NativeUnavailable, OSError)):
        _native.build("probe", "int f(void) { return 5; }")
    fallback.unlink()
    lib = _native.build("probe", "int f(void) { return 5; }")
    assert lib.f() == 5 and fallback.is_dir() and not fallback.is_symlink()
    import hashlib

    src = "int f(void) { return 6; }"                 # a library not loaded yet (never rewrite a mapped one)
    key = hashlib.sha256("\0".join((src, _native.cpu_tag(), "-O3")).encode()).hexdigest()[:16]
    damaged = fallback / f"probe_{key}.so"
    damaged.write_bytes(b"not an ELF file")           # e.g. cut short by a full disk: rebuilt once, then loaded
    damaged.chmod(0o755)
    assert _native.build("probe", src).f() == 6
    assert damaged.read_bytes()[:4] == b"\x7fELF"
