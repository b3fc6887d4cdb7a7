"""The flow table, timeouts, emission policies and windows.

The single place that knows what a flow is; training and serving both use it.
Never imports torch.

    from trafficsnn.flows import FlowTable, EveryK, flows_from_capture, paper_windows
    table = FlowTable(idle_timeout=120, active_timeout=1800, policy=EveryK(8))
    for batch in read_packets("trace.pcap"):
        for update in table.add(batch):     # FlowUpdate objects (EveryK(8, columnar=True): UpdateBlocks)
            ...
    rest = table.flush()                   # final updates at end of input
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from .policies import Columnar, EveryK, WholeFlows
from .records import C2S, END_REASONS, S2C, Flow, FlowKey, FlowUpdate, UpdateBlock
from .store import FlowBlock, FlowSet, read_columns, read_flows, write_flows, write_jsonl
from .table import FlowTable
from .windows import PaperWindow, flow_prefix, flow_windows, paper_windows

__all__ = [
    "C2S", "S2C", "END_REASONS", "Flow", "FlowKey", "FlowUpdate", "FlowTable", "WholeFlows", "EveryK", "Columnar",
    "FlowBlock", "UpdateBlock",
    "PaperWindow", "paper_windows", "flow_prefix", "flow_windows", "flows_from_capture",
    "FlowSet", "read_flows", "read_columns", "write_flows", "write_jsonl",
]


def flows_from_capture(paths: str | os.PathLike | Iterable[str | os.PathLike], *, strict: bool = False,
                       errors: list | None = None, batch_size: int = 65536, **table_opts) -> Iterator[Flow]:
    """Whole flows of one or more captures (read + decode + ``FlowTable``).

    Each file gets its own table (flows never span files; its live flows end "eof"
    at the end of the file). ``table_opts`` go to ``FlowTable`` (``idle_timeout=None,
    active_timeout=None, tcp_close=False`` gives nDPI-style whole-file flows).
    Damage found in a file is appended to ``errors`` (if given) and reading goes on
    with the next file; with ``strict=True`` it is raised instead.
    """
    from ..packets import read_packets

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    table_opts.setdefault("policy", WholeFlows())
    for path in paths:
        table = FlowTable(**table_opts)
        reader = read_packets(path, batch_size=batch_size, strict=strict)
        for batch in reader:
            yield from table.add(batch)
        yield from table.flush()
        if errors is not None:
            errors.extend(reader.errors)
