"""The attach protocol spoken over a keeper's unix socket.

Each frame is one type byte, a 4-byte big-endian length and the payload.
Client to keeper: INPUT (bytes for the terminal), WINSIZE (rows, cols as two uint16).
Keeper to client: OUTPUT (terminal bytes), EXIT (JSON: how the agent ended; the keeper is done),
NOTICE (JSON: something to tell the user, such as a restart).
"""

from __future__ import annotations

import json
import struct
from typing import Any

INPUT = b"I"
WINSIZE = b"W"
OUTPUT = b"O"
EXIT = b"X"
NOTICE = b"N"

HEADER = struct.Struct(">cI")
MAX_FRAME = 1 << 20


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def winsize_frame(rows: int, cols: int) -> bytes:
    return frame(WINSIZE, struct.pack(">HH", rows, cols))


def json_frame(kind: bytes, data: dict[str, Any]) -> bytes:
    return frame(kind, json.dumps(data).encode())


def parse_winsize(payload: bytes) -> tuple[int, int]:
    rows, cols = struct.unpack(">HH", payload[:4])
    return rows, cols


class FrameReader:
    """Accumulates bytes from a stream and yields complete frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise ValueError("frame too large")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append((kind, bytes(self._buf[HEADER.size : end])))
            del self._buf[:end]
        return frames
