"""CLI exit codes: no packet read from any input is an error, not an empty result."""
from __future__ import annotations

import pytest

from trafficsnn.cli import main
from trafficsnn.serve.demo import write_demo_pcap


@pytest.mark.parametrize("content", [b"hello, not a capture\n", b""])
def test_extract_with_no_readable_packet_exits_2_and_writes_nothing(tmp_path, capsys, content):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    out = tmp_path / "o.npz"
    with pytest.raises(SystemExit) as ei:
        main(["extract", str(bad), "-o", str(out), "-q"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "no packet could be read" in err and "bad.pcap" in err and "Traceback" not in err
    assert not out.exists()


def test_extract_with_partial_damage_keeps_going_and_names_the_damaged_file(tmp_path, capsys):
    good, bad = tmp_path / "good.pcap", tmp_path / "bad.pcap"
    write_demo_pcap(good, n_flows=3, packets_per_flow=5)
    bad.write_bytes(b"junk")
    out = tmp_path / "o.npz"
    main(["extract", str(good), str(bad), "-o", str(out)])
    err = capsys.readouterr().err
    assert out.exists() and "damaged: " in err and str(bad) in err.split("damaged: ")[-1]


def test_extract_negative_max_packets_is_a_usage_error(tmp_path, capsys):
    good = tmp_path / "good.pcap"
    write_demo_pcap(good, n_flows=1, packets_per_flow=3)
    with pytest.raises(SystemExit) as ei:
        main(["extract", str(good), "-o", str(tmp_path / "o.npz"), "--max-packets", "-1"])
    assert ei.value.code == 2 and "Traceback" not in capsys.readouterr().err


@pytest.fixture
def listener(tmp_path):
    """A bare ZeroMQ PULL socket standing in for the classifier (the agent's handshake succeeds)."""
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    ep = f"ipc://{tmp_path}/updates"
    pull.bind(ep)
    yield ep
    pull.close(0)
    ctx.term()


@pytest.mark.parametrize("content", [b"hello, not a capture\n", b""])
def test_capture_pcap_with_no_readable_packet_exits_2(tmp_path, capsys, listener, content):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    with pytest.raises(SystemExit) as ei:
        main(["capture", "--pcap", str(bad), "--connect", listener, "-q", "--connect-timeout", "10"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "no packet could be read" in err and "bad.pcap" in err and "Traceback" not in err


def test_capture_pcap_with_partial_damage_keeps_going_and_names_the_damaged_file(tmp_path, capsys, caplog, listener):
    import json

    good, bad = tmp_path / "good.pcap", tmp_path / "bad.pcap"
    write_demo_pcap(good, n_flows=3, packets_per_flow=5)
    bad.write_bytes(b"junk")
    main(["capture", "--pcap", str(good), "--pcap", str(bad), "--connect", listener, "--connect-timeout", "10"])
    err = capsys.readouterr().err
    summary = json.loads([ln for ln in err.splitlines() if ln.startswith('{"capture"')][-1])
    assert summary["capture"]["packets"] == 15 and list(summary["damaged"]) == [str(bad)]
    assert "1 of 2 input(s) damaged" in caplog.text and "Traceback" not in err


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    from trafficsnn.serve.demo import make_random_model

    return make_random_model(tmp_path_factory.mktemp("m") / "model")


@pytest.mark.parametrize("content", [b"hello, not a capture\n", b""])
def test_replay_with_no_readable_packet_exits_2(tmp_path, capsys, random_model, content):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    with pytest.raises(SystemExit) as ei:
        main(["replay", str(bad), "--inproc", "--model", str(random_model), "--device", "cpu", "-q"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "no packet could be read" in err and "bad.pcap" in err and "Traceback" not in err


def test_replay_with_partial_damage_names_the_damaged_file(tmp_path, capsys, random_model):
    good, bad = tmp_path / "good.pcap", tmp_path / "bad.pcap"
    write_demo_pcap(good, n_flows=3, packets_per_flow=5)
    bad.write_bytes(b"junk")
    main(["replay", str(good), str(bad), "--inproc", "--model", str(random_model), "--device", "cpu", "-q"])
    cap = capsys.readouterr()
    assert "3 verdicts" in cap.err and "damaged: " in cap.err and str(bad) in cap.err.split("damaged: ")[-1]


def test_train_and_evaluate_print_and_record_cut_and_unreadable_captures(tmp_path, capsys, monkeypatch):
    import json

    from trafficsnn.train.baselines import GBTBaseline

    # this checks reporting, not the model: 5 boosting rounds instead of 200 keep it to seconds
    monkeypatch.setattr(GBTBaseline.__init__, "__defaults__", (5, 0.1, 31, 0))
    data = tmp_path / "data"
    main(["synth", str(data), "--classes", "Chat,VoIP", "--flows-per-class", "4", "--captures-per-class", "3",
          "--duration", "20", "25", "--seed", "2", "--quiet"])
    (data / "Chat" / "junk.pcap").write_text("not a capture\n")
    cut = sorted((data / "VoIP").glob("*.pcap"))[0]
    raw = cut.read_bytes()
    cut.write_bytes(raw[: len(raw) * 2 // 3])   # cut mid-file, usually mid-record
    cache = ["--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "m"
    main(["train", str(data), "--out", str(out), "--model", "gbt", "--fractions", "0.34", "0.0", "0.66",
          "--min-packets", "2", *cache, "--quiet"])
    err = capsys.readouterr().err
    rel_junk, rel_cut = "Chat/junk.pcap", f"VoIP/{cut.name}"
    assert "2 capture(s) damaged or unreadable" in err and rel_junk in err and rel_cut in err
    assert "Traceback" not in err
    split = json.loads((out / "split.json").read_text())
    assert set(split["damaged_captures"]) == {rel_junk, rel_cut}
    assert split["damaged_captures"][rel_junk]["flows"] == 0 and split["damaged_captures"][rel_cut]["flows"] > 0
    assert "magic" in split["damaged_captures"][rel_junk]["error"]
    main(["evaluate", str(out), str(data), "--out", str(tmp_path / "r"), *cache, "--quiet", "--min-packets", "2"])
    err = capsys.readouterr().err
    assert rel_junk in err and rel_cut in err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(rep["damaged_captures"]) == {rel_junk, rel_cut}


# ------------------------------------------------------------------ the CLI error matrix

@pytest.fixture
def busy_port():
    """A TCP port some other process holds (listening)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


MATRIX = {
    # name: (argv with {tmp} {port} {model} {pcap}, text the one error line must hold)
    "classify metrics port in use": ("classify --bind ipc://{tmp}/a --model {model} --device cpu --metrics-port {port}",
                                     "cannot serve metrics on 127.0.0.1:{port}"),
    "classify metrics port out of range": ("classify --bind ipc://{tmp}/a --model {model} --metrics-port 99999",
                                           "--metrics-port"),
    "classify --pub port in use": ("classify --bind ipc://{tmp}/a --model {model} --device cpu "
                                   "--pub tcp://127.0.0.1:{port}", "cannot bind --pub tcp://127.0.0.1:{port}"),
    "classify --bind port in use": ("classify --bind tcp://127.0.0.1:{port} --model {model} --device cpu",
                                    "cannot bind ZeroMQ endpoint tcp://127.0.0.1:{port}: Address already in use"),
    "classify --bind bad endpoint": ("classify --bind nonsense --model {model} --device cpu", "tcp://HOST:PORT"),
    "classify --connect bad endpoint": ("classify --connect tcp://nohost --model {model} --device cpu",
                                        "cannot connect ZeroMQ endpoint tcp://nohost"),
    "classify --parquet missing parent": ("classify --bind ipc://{tmp}/a --model {model} --parquet {tmp}/no/pq",
                                          "--parquet {tmp}/no/pq: folder {tmp}/no does not exist"),
    "classify --jsonl missing folder": ("classify --bind ipc://{tmp}/a --model {model} --jsonl {tmp}/no/v.jsonl",
                                        "--jsonl {tmp}/no/v.jsonl: folder {tmp}/no does not exist"),
    "classify missing --config": ("classify --config {tmp}/no.toml --bind ipc://{tmp}/a", "does not exist"),
    "classify --config a folder": ("classify --config {tmp} --bind ipc://{tmp}/a", "--config"),
    "capture --connect bad endpoint": ("capture --pcap {pcap} --connect nonsense", "tcp://HOST:PORT"),
    "capture metrics port in use": ("capture --pcap {pcap} --connect ipc://{tmp}/a --metrics-port {port}",
                                    "cannot serve metrics on 127.0.0.1:{port}"),
    "capture metrics port out of range": ("capture --pcap {pcap} --connect ipc://{tmp}/a --metrics-port 70000",
                                          "--metrics-port"),
    "capture --snaplen too small": ("capture -i lo --snaplen 10 --connect ipc://{tmp}/a", "--snaplen"),
    "capture unknown interface": ("capture -i nosuchif0 --connect ipc://{tmp}/a", "nosuchif0"),
    "capture no source": ("capture --connect ipc://{tmp}/a", "give exactly one source"),
    "train --lr -1": ("train {tmp} --out {tmp}/m --lr -1", "--lr"),
    "extract -o a folder": ("extract {pcap} -o {tmp}", "-o"),
}


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_cli_error_matrix_one_line_exit_2_no_traceback(case, tmp_path, capsys, busy_port, random_model):
    pcap = tmp_path / "good.pcap"
    write_demo_pcap(pcap, n_flows=2, packets_per_flow=3)
    argv, want = MATRIX[case]
    fill = {"tmp": str(tmp_path), "port": busy_port, "model": str(random_model), "pcap": str(pcap)}
    with pytest.raises(SystemExit) as ei:
        main(argv.format(**fill).split())
    err = capsys.readouterr().err
    assert ei.value.code == 2, err
    assert "Traceback" not in err and want.format(**fill) in err, err
    lines = [ln for ln in err.splitlines() if ln.lower().startswith("error")]
    assert len(lines) == 1, err   # one line naming the thing, never a printed Python tuple
