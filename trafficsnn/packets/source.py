"""``read_packets``: a capture file straight to decoded ``PacketBatch`` objects."""
from __future__ import annotations

import os
from typing import Iterator

from ..errors import CaptureError
from .batch import PacketBatch
from .decode import Decoder
from .readers import CaptureReader


class PacketReader:
    """Iterable of ``PacketBatch`` from one capture file (reader + decoder).

    ``errors`` is the reader's damage list (with ``strict`` the first is raised);
    ``stats`` merges both sides: ``{"capture": {...}, "decode": {...}}``;
    ``warnings`` lists one-time messages such as unsupported link types.
    Batches that decode to zero packets are not yielded.
    """

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 65536, strict: bool = False,
                 decoder: Decoder | None = None):
        self.reader = CaptureReader(path, batch_size=batch_size, strict=strict)
        self.decoder = decoder if decoder is not None else Decoder()
        self.path = self.reader.path

    @property
    def errors(self) -> list[CaptureError]:
        return self.reader.errors

    @property
    def stats(self) -> dict:
        return {"capture": self.reader.stats, "decode": self.decoder.stats}

    @property
    def warnings(self) -> list[str]:
        return self.decoder.warnings

    def __iter__(self) -> Iterator[PacketBatch]:
        dec = self.decoder
        for frames in self.reader:
            pb = dec.decode(frames)
            if len(pb):
                yield pb


def read_packets(path: str | os.PathLike, *, batch_size: int = 65536, strict: bool = False,
                 decoder: Decoder | None = None) -> PacketReader:
    """Open a capture and decode it: iterate for ``PacketBatch``; ``.errors``/``.stats`` after."""
    return PacketReader(path, batch_size=batch_size, strict=strict, decoder=decoder)
