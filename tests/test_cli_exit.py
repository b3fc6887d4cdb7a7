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
