"""`trafficsnn extract`: pcap in, flows out (npz and JSON lines), clear damage messages."""
from __future__ import annotations

import json
import struct

from trafficsnn.cli import main
from trafficsnn.flows import read_flows


def _frame(src: int, dst: int, sport: int, dport: int, flags: int, payload: int = 0) -> bytes:
    ip_len = 20 + 20 + payload
    eth = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0x4000, 64, 6, 0,
                     struct.pack("!I", src), struct.pack("!I", dst))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, flags, 65535, 0, 0)
    return eth + ip + tcp + b"\x00" * payload


def write_pcap(path, packets) -> None:
    """packets: (ts, frame bytes)."""
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ts, fr in packets:
            fh.write(struct.pack("<IIII", int(ts), int(round((ts % 1) * 1e6)), len(fr), len(fr)) + fr)


A, B, C = 0x0A000001, 0x0A000002, 0x0A000003


def _two_flows():
    return [(100.0, _frame(A, B, 1234, 443, 0x02)), (100.1, _frame(B, A, 443, 1234, 0x12)),
            (100.2, _frame(A, B, 1234, 443, 0x18, 100)), (100.3, _frame(C, B, 5555, 80, 0x18, 10)),
            (100.4, _frame(B, A, 443, 1234, 0x18, 1000))]


def _run(capsys, *args):
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_extract_npz(tmp_path, capsys):
    p = tmp_path / "a.pcap"
    write_pcap(p, _two_flows())
    code, _, err = _run(capsys, "extract", str(p), "-o", str(tmp_path / "f.npz"))
    assert code == 0 and "5 packets -> 2 flows" in err
    fs = read_flows(tmp_path / "f.npz")
    assert len(fs) == 2 and fs.meta["summary"]["packets"] == 5
    f = next(f for f in fs if f.key.server_port == 443)
    assert (f.key.client_ip, f.key.client_port, f.key.server_ip) == ("10.0.0.1", 1234, "10.0.0.2")
    assert f.direction.tolist() == [0, 1, 0, 1] and f.size.tolist() == [40, 40, 140, 1040]
    assert f.c2s_pkts == 2 and f.s2c_bytes == 54 + 1054


def test_extract_jsonl_to_stdout(tmp_path, capsys):
    p = tmp_path / "a.pcap"
    write_pcap(p, _two_flows())
    code, out, _ = _run(capsys, "extract", str(p), "-o", "-", "--format", "jsonl", "-q")
    rows = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and len(rows) == 2
    assert {r["server_port"] for r in rows} == {443, 80}


def test_damaged_file_warns_and_keeps_going(tmp_path, capsys):
    good, bad = tmp_path / "good.pcap", tmp_path / "bad.pcap"
    write_pcap(good, _two_flows())
    write_pcap(bad, _two_flows())
    data = bad.read_bytes()
    bad.write_bytes(data[:-30])                      # last record cut short
    code, _, err = _run(capsys, "extract", str(bad), str(good), "-o", str(tmp_path / "f.npz"))
    assert code == 0
    warn = [x for x in err.splitlines() if x.startswith("warning:")]
    assert len(warn) == 1 and "bad.pcap" in warn[0] and "byte" in warn[0]
    assert "9 packets" in err and "1 damaged file" in err
    code, _, err = _run(capsys, "extract", str(bad), str(good), "-o", str(tmp_path / "g.npz"), "--strict")
    assert code != 0 and "bad.pcap" in err and "Traceback" not in err


def test_whole_file_mode_and_timeouts(tmp_path, capsys):
    p = tmp_path / "a.pcap"
    pk = [(100.0 + 300 * i, _frame(A, B, 1234, 53, 0x18, 5)) for i in range(3)]
    write_pcap(p, pk)
    _run(capsys, "extract", str(p), "-o", str(tmp_path / "t.npz"), "-q")
    assert len(read_flows(tmp_path / "t.npz")) == 3            # idle timeout 120 s splits
    _run(capsys, "extract", str(p), "-o", str(tmp_path / "w.npz"), "-q", "--whole-file")
    assert len(read_flows(tmp_path / "w.npz")) == 1


def test_help_and_bad_output(tmp_path, capsys):
    code, out, _ = _run(capsys, "extract", "--help")
    assert code == 0 and "--idle-timeout" in out
    p = tmp_path / "a.pcap"
    write_pcap(p, _two_flows())
    code, _, err = _run(capsys, "extract", str(p), "-o", str(tmp_path / "no" / "such" / "x.npz"))
    assert code != 0 and "does not exist" in err


def test_flows_from_capture_per_file_and_errors(tmp_path):
    from trafficsnn.flows import flows_from_capture

    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    write_pcap(a, _two_flows())
    write_pcap(b, _two_flows())
    b.write_bytes(b.read_bytes()[:-30])
    errs: list = []
    flows = list(flows_from_capture([a, b], errors=errs))
    assert len(flows) == 4 and sum(f.packets for f in flows) == 9     # flows never span files
    assert len(errs) == 1 and "b.pcap" in str(errs[0])


def test_every_shared_capture_extracts_without_crash(shared_data, tmp_path):
    from trafficsnn.commands.extract import extract_files

    for folder in ("robustness", "developer"):
        pcaps = sorted(str(p) for p in (shared_data / "ndpi" / folder / "pcap").iterdir())
        warnings: list[str] = []
        s = extract_files(pcaps, str(tmp_path / f"{folder}.npz"), warn=warnings.append)
        assert s["files"] == len(pcaps) and s["packets"] > 0 and s["flows"] > 0
        assert s["errors"] <= len(warnings)
        if folder == "robustness":
            assert any("fuzz-2021-10-13.pcap" in w for w in warnings)
        assert len(read_flows(tmp_path / f"{folder}.npz")) == s["flows"]


def test_progress_bar_by_bytes(tmp_path, capsys):
    from trafficsnn.commands.extract import extract_files

    p = tmp_path / "a.pcap"
    write_pcap(p, _two_flows())
    s = extract_files([str(p)], str(tmp_path / "o.jsonl"), fmt="jsonl", progress=True)
    err = capsys.readouterr().err
    assert s["flows"] == 2 and "extract" in err and "100%" in err


def test_unwritable_output_is_one_clear_error(tmp_path, capsys):
    p = tmp_path / "a.pcap"
    write_pcap(p, _two_flows())
    d = tmp_path / "ro"
    d.mkdir()
    target = d / "x.npz"
    target.mkdir()                                   # a folder where the file should go
    code, _, err = _run(capsys, "extract", str(p), "-o", str(target / "sub" / "y.npz"))
    assert code != 0 and "does not exist" in err
    (d / "x.npz.tmp").mkdir()
    code, _, err = _run(capsys, "extract", str(p), "-o", str(d / "x.npz"))
    assert code != 0 and ("cannot write the output" in err or "is a folder" in err) and "Traceback" not in err


def test_cli_extract_stays_light(tmp_path):
    """A fresh `trafficsnn extract` imports none of the classifier's or the tables' stacks and keeps
    OpenBLAS to one thread (its idle threads spin: the largest start-up cost once measured)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    write_pcap(tmp_path / "a.pcap", _two_flows())
    code = ("import sys, os\nfrom trafficsnn.cli import main\n"
            "main(['extract', sys.argv[1], '-o', sys.argv[2], '-q'])\n"
            "heavy = sorted(m for m in ('torch', 'matplotlib', 'sklearn', 'pandas', 'pyarrow', 'scapy', 'zmq')"
            " if m in sys.modules)\n"
            "print(heavy, os.environ.get('OPENBLAS_NUM_THREADS'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.pcap"), str(tmp_path / "f.npz")],
                       capture_output=True, text=True, env=env, check=True)
    assert r.stdout.split("\n")[-2] == "[] 1", r.stdout + r.stderr
    assert len(read_flows(tmp_path / "f.npz")) == 2
