"""Reading Arrow IPC message headers without reading their buffers.

A decoder that wants to refuse a hostile stream before it allocates anything (a
compressed buffer of a few bytes can inflate to gigabytes; a header can declare
billions of rows) reads every message's flatbuffer header first
(format/Message.fbs: Message{version, header_type, header, bodyLength,
custom_metadata}, RecordBatch{length, nodes, buffers, compression}).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Header:
    kind: str  # "schema", "record batch", ...
    rows: int  # record batches: declared length
    compressed: bool
    meta: dict[bytes, bytes]  # the message's custom metadata


def headers(blob: bytes) -> Iterator[Header]:
    """The headers of an IPC stream's messages, in order. Raises ValueError,
    struct.error or an Arrow error on bytes that are not such a stream."""
    for message in pa.ipc.MessageReader.open_stream(pa.BufferReader(blob)):
        if message.type != "record batch":
            yield Header(message.type, 0, False, {})
            continue
        yield Header(message.type, *batch_header(memoryview(message.metadata)))


def batch_header(buf: memoryview) -> tuple[int, bool, dict[bytes, bytes]]:
    """(rows, compressed, custom metadata) of a RecordBatch message's flatbuffer."""
    msg = fb_table(buf, fb_deref(buf, 0))
    batch = fb_table(buf, fb_deref(buf, msg(2)))
    rows = struct.unpack_from("<q", buf, batch(0))[0] if batch(0) is not None else 0
    meta = {}
    if msg(4) is not None:
        vec = fb_deref(buf, msg(4))
        for j in range(struct.unpack_from("<I", buf, vec)[0]):
            kv = fb_table(buf, fb_deref(buf, vec + 4 + 4 * j))
            meta[fb_bytes(buf, kv(0))] = fb_bytes(buf, kv(1))
    return rows, batch(3) is not None, meta


def fb_deref(buf: memoryview, pos: int | None) -> int:
    if pos is None:
        raise ValueError("a required flatbuffer field is missing")
    return pos + struct.unpack_from("<I", buf, pos)[0]


def fb_table(buf: memoryview, pos: int) -> Callable[[int], int | None]:
    """Field ``i`` -> its position in the flatbuffer table at ``pos``, None if absent."""
    vtable = pos - struct.unpack_from("<i", buf, pos)[0]
    size = struct.unpack_from("<H", buf, vtable)[0]

    def field(i: int) -> int | None:
        at = 4 + 2 * i
        off = struct.unpack_from("<H", buf, vtable + at)[0] if at + 2 <= size else 0
        return pos + off if off else None

    return field


def fb_bytes(buf: memoryview, pos: int | None) -> bytes:
    if pos is None:
        return b""
    at = fb_deref(buf, pos)
    n = struct.unpack_from("<I", buf, at)[0]
    return bytes(buf[at + 4:at + 4 + n])
