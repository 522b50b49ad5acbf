"""Runner output logs: size-capped and rotated when written, tailed and followed when read.

A failing log write (full disk, removed directory) never stops the agent: the writer drops the
data, counts the failure and tries to reopen the file later.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path


class RotatingLog:
    REOPEN_INTERVAL = 5.0

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.failed_writes = 0
        self._fd: int | None = None
        self._size = 0
        self._next_open_attempt = 0.0
        self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._size = os.fstat(self._fd).st_size
        except OSError:
            self._fd = None
            self._next_open_attempt = time.monotonic() + self.REOPEN_INTERVAL

    def _rotate(self) -> None:
        self.close()
        try:
            if self.backups == 0:
                os.unlink(self.path)
            else:
                for n in range(self.backups - 1, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.{n}")
                    if older.exists():
                        os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        except OSError:
            self.failed_writes += 1
        self._open()

    def write(self, data: bytes) -> None:
        if self._fd is None:
            if time.monotonic() < self._next_open_attempt:
                self.failed_writes += 1
                return
            self._open()
            if self._fd is None:
                self.failed_writes += 1
                return
        while data:
            room = self.max_bytes - self._size
            if room <= 0:
                self._rotate()
                if self._fd is None:
                    self.failed_writes += 1
                    return
                continue
            chunk, data = data[:room], data[room:]
            try:
                written = os.write(self._fd, chunk)
            except OSError:
                self.failed_writes += 1
                self.close()
                self._next_open_attempt = time.monotonic() + self.REOPEN_INTERVAL
                return
            self._size += written
            if written < len(chunk):
                data = chunk[written:] + data

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def log_files(path: Path, backups: int = 99) -> list[Path]:
    """The log and its rotated predecessors, oldest first."""
    older = [path.with_name(f"{path.name}.{n}") for n in range(backups, 0, -1)]
    return [p for p in older if p.exists()] + ([path] if path.exists() else [])


def tail(path: Path, lines: int | None) -> bytes:
    """The last ``lines`` lines across the log and its rotations (all of it when ``lines`` is None)."""
    return read_tail(path, lines)[0]


def read_tail(path: Path, lines: int | None) -> tuple[bytes, tuple[int, int] | None]:
    """:func:`tail`, and where it stopped reading the current log as (inode, offset), for :func:`follow`."""
    chunks: list[bytes] = []
    count = 0
    position = None
    for file in reversed(log_files(path)):
        try:
            with open(file, "rb") as f:
                data = f.read()
                if file == path:
                    position = (os.fstat(f.fileno()).st_ino, len(data))
        except OSError:
            continue
        chunks.insert(0, data)
        count += data.count(b"\n")
        if lines is not None and count > lines:
            break
    data = b"".join(chunks)
    if lines is None:
        return data, position
    if lines <= 0:
        return b"", position
    trailing = data.endswith(b"\n")
    parts = data.split(b"\n")
    if trailing:
        parts = parts[:-1]
    kept = parts[-lines:]
    return b"\n".join(kept) + (b"\n" if trailing and kept else b""), position


def follow(
    path: Path, *, start_at_end: bool = True, start: tuple[int, int] | None = None, poll_interval: float = 0.1, stop=None
) -> Iterator[bytes]:
    """Yield data appended to the log, across rotations, until ``stop()`` returns true.

    ``start`` (from :func:`read_tail`) resumes exactly where that read stopped, even if the log was
    rotated once since, so that nothing written in between is lost; ``start_at_end`` then no longer applies.
    """
    handle = None
    inode = None
    position = 0
    first = start is None
    if start is not None:
        handle = _open_inode(path, start[0])
        if handle is not None:
            inode, position = start
            handle.seek(position)
    while True:
        if handle is None:
            try:
                handle = open(path, "rb")
                st = os.fstat(handle.fileno())
                inode = st.st_ino
                position = st.st_size if (first and start_at_end) else 0
                handle.seek(position)
            except OSError:
                handle = None
            first = False
        got = False
        if handle is not None:
            data = handle.read()
            if data:
                position += len(data)
                got = True
                yield data
            else:
                try:
                    st = os.stat(path)
                    if st.st_ino != inode or st.st_size < position:
                        # rotated or truncated: finish the old file, then start the new one from its top
                        rest = handle.read()
                        if rest:
                            yield rest
                        handle.close()
                        handle = None
                        continue
                except OSError:
                    pass
        if not got:
            if stop is not None and stop():
                if handle is not None:
                    rest = handle.read()
                    if rest:
                        yield rest
                    handle.close()
                return
            time.sleep(poll_interval)


def _open_inode(path: Path, inode: int):
    """The log or its first rotation, whichever is the file ``inode``; None if neither is."""
    for candidate in (path, path.with_name(f"{path.name}.1")):
        try:
            handle = open(candidate, "rb")
        except OSError:
            continue
        if os.fstat(handle.fileno()).st_ino == inode:
            return handle
        handle.close()
    return None
