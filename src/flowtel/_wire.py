"""Protocol Buffers wire format, read and written directly for the few OTLP messages flowtel touches.

The collector reads each span's fields once and forwards the span's own bytes, so it never builds
protobuf objects per attribute: with upb, iterating a span's repeated ``KeyValue`` field and
reading each value cost more than all of flowtel's logic for the span. Input has already been
parsed by upb (``FromString``), which rejects malformed messages and invalid UTF-8 with a proper
error; these readers only walk bytes known to be well formed, and raise ``ValueError`` if not.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

_DOUBLE = struct.Struct("<d")
FIXED64 = struct.Struct("<Q")
FIXED32 = struct.Struct("<I")
_SIGN = 1 << 63


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def skip(buf: bytes, pos: int, tag: int) -> int:
    """The position after the value of a field this reader does not use."""
    wire_type = tag & 7
    if wire_type == 0:
        return varint(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        n, pos = varint(buf, pos)
        return pos + n
    if wire_type == 5:
        return pos + 4
    raise ValueError(f"unsupported wire type {wire_type}")


def fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(tag, field start, value start, value end)`` of each field in ``buf[pos:end]``, one at a time; for
    length-delimited fields the value is the payload, for the others the encoded value. A generator: a list
    of every field held about 170 bytes per field, 85 times a 2-byte empty span or resource."""
    while pos < end:
        start = pos
        tag = buf[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = varint(buf, start)
        if tag & 7 == 2:
            n = buf[pos]
            pos += 1
            if n >= 0x80:
                n, pos = varint(buf, pos - 1)
            yield tag, start, pos, pos + n
            pos += n
        else:
            value_end = skip(buf, pos, tag)
            yield tag, start, pos, value_end
            pos = value_end
    if pos != end:
        raise ValueError("field runs past the end of its message")


def field_bounds(buf: bytes, start: int) -> tuple[int, int]:
    """(start, end) of the length-delimited field whose one-byte tag is at ``start``; one- and two-byte
    lengths (up to 16 KiB, nearly every attribute) are read without a call."""
    n = buf[start + 1]
    if n < 0x80:
        return start, start + 2 + n
    if buf[start + 2] < 0x80:
        return start, start + 3 + ((n & 0x7F) | (buf[start + 2] << 7))
    n, pos = varint(buf, start + 1)
    return start, pos + n


def any_value(buf: bytes, pos: int, end: int) -> Any:
    """An ``AnyValue``: str, bool, int, float, bytes, tuple (array) or dict (kvlist); None if empty."""
    value: Any = None
    while pos < end:
        tag = buf[pos]
        pos += 1
        if tag == 0x0A or tag == 0x2A or tag == 0x32 or tag == 0x3A:  # string, array, kvlist, bytes
            n, pos = varint(buf, pos)
            if tag == 0x0A:
                value = buf[pos:pos + n].decode()
            elif tag == 0x3A:
                value = bytes(buf[pos:pos + n])
            elif tag == 0x2A:
                value = tuple(any_value(buf, a, b) for t, _, a, b in fields(buf, pos, pos + n) if t == 0x0A)
            else:
                value = key_values(buf, pos, pos + n)
            pos += n
        elif tag == 0x10:  # bool
            n, pos = varint(buf, pos)
            value = n != 0
        elif tag == 0x18:  # int64, two's complement
            n, pos = varint(buf, pos)
            value = n - (1 << 64) if n & _SIGN else n
        elif tag == 0x21:  # double
            value = _DOUBLE.unpack_from(buf, pos)[0]
            pos += 8
        else:
            if tag >= 0x80:
                tag, pos = varint(buf, pos - 1)
            pos = skip(buf, pos, tag)
    if pos != end:
        raise ValueError("AnyValue runs past the end of its message")
    return value


def key_value(buf: bytes, pos: int, end: int) -> tuple[str, Any]:
    """A ``KeyValue``: (key, value)."""
    key = ""
    value: Any = None
    while pos < end:
        tag = buf[pos]
        pos += 1
        if tag == 0x0A or tag == 0x12:
            n = buf[pos]
            pos += 1
            if n >= 0x80:
                n, pos = varint(buf, pos - 1)
            if tag == 0x0A:
                key = buf[pos:pos + n].decode()
            elif n > 1 and buf[pos] == 0x0A and buf[pos + 1] == n - 2:  # a short string: nearly every value
                value = buf[pos + 2:pos + n].decode()
            elif n > 130 and buf[pos] == 0x0A and buf[pos + 2] < 0x80 and (
                    (buf[pos + 1] & 0x7F) | (buf[pos + 2] << 7)) == n - 3:  # a string of 128 B to 16 KiB
                value = buf[pos + 3:pos + n].decode()
            else:
                value = any_value(buf, pos, pos + n)
            pos += n
        else:
            if tag >= 0x80:
                tag, pos = varint(buf, pos - 1)
            pos = skip(buf, pos, tag)
    if pos != end:
        raise ValueError("KeyValue runs past the end of its message")
    return key, value


def key_values(buf: bytes, pos: int, end: int) -> dict[str, Any]:
    """A message whose field 1 is ``repeated KeyValue`` (``KeyValueList``, ``Resource``, an event's
    attributes when given its own bounds) as a dict; a repeated key keeps its last value."""
    out: dict[str, Any] = {}
    for tag, _, a, b in fields(buf, pos, end):
        if tag == 0x0A:
            key, value = key_value(buf, a, b)
            out[key] = value
    return out


def fixed64(buf: bytes, pos: int) -> int:
    return FIXED64.unpack_from(buf, pos)[0]


# Writing.

def encode_varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + encode_varint(len(payload)) + payload
