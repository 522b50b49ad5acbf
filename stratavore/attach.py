"""Attaching a terminal to a runner: raw mode, window size following the client, a detach key."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import termios
import tty
from dataclasses import dataclass
from pathlib import Path

from . import protocol
from .errors import Conflict


@dataclass
class AttachOutcome:
    detached: bool
    exit: dict | None = None


def terminal_size(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def connect(socket_path: Path, name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(socket_path))
    except OSError:
        sock.close()
        raise Conflict(f"runner {name!r} is not accepting attach connections (is it running?)") from None
    return sock


def attach(sock: socket.socket, detach_key: bytes, *, stdin_fd: int = 0, stdout_fd: int = 1) -> AttachOutcome:
    """Relay between this terminal and the runner until detach or the agent's end."""
    is_tty = os.isatty(stdin_fd)
    saved = termios.tcgetattr(stdin_fd) if is_tty else None
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    old_winch = signal.signal(signal.SIGWINCH, lambda *_: None)
    reader = protocol.FrameReader()
    stdin_open = True

    def send_size() -> None:
        size = terminal_size(stdin_fd) or terminal_size(stdout_fd)
        if size:
            sock.sendall(protocol.winsize_frame(*size))

    try:
        if saved is not None:
            tty.setraw(stdin_fd)
        send_size()
        while True:
            watched = [sock, wake_r] + ([stdin_fd] if stdin_open else [])
            ready, _, _ = select.select(watched, [], [])
            if wake_r in ready:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
                send_size()
            if stdin_open and stdin_fd in ready:
                data = os.read(stdin_fd, 4096)
                if not data:
                    stdin_open = False
                    continue
                if detach_key in data:
                    before = data[: data.index(detach_key)]
                    if before:
                        sock.sendall(protocol.frame(protocol.INPUT, before))
                    return AttachOutcome(detached=True)
                sock.sendall(protocol.frame(protocol.INPUT, data))
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return AttachOutcome(detached=False)
                for kind, payload in reader.feed(data):
                    if kind == protocol.OUTPUT:
                        _write_all(stdout_fd, payload)
                    elif kind == protocol.NOTICE:
                        message = json.loads(payload).get("message", "")
                        _write_all(stdout_fd, f"\r\n[stratavore: {message}]\r\n".encode())
                    elif kind == protocol.EXIT:
                        return AttachOutcome(detached=False, exit=json.loads(payload))
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)
        sock.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]


def describe_key(key: bytes) -> str:
    code = key[0]
    return f"Ctrl-{chr(code ^ 0x40)}" if code < 32 else repr(key)
