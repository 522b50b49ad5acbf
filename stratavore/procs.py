"""Everything Stratavore asks of the operating system about processes, in one place.

A process is identified by its pid *and* its start time: pids are reused, so a pid alone never
proves that a runner's process is still the one we started.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Iterable

LINUX = sys.platform.startswith("linux")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_btime: float | None = None
# two reads of the same process's start time agree exactly; this only absorbs float rounding
START_TIME_TOLERANCE = 0.05


def boot_id() -> str:
    """An identifier that changes on every boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        import psutil

        return str(int(psutil.boot_time()))


def _boot_time() -> float:
    global _btime
    if _btime is None:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime"):
                    _btime = float(line.split()[1])
                    break
            else:  # pragma: no cover - every Linux kernel has btime
                _btime = 0.0
    return _btime


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may itself contain spaces or parentheses
    return data[data.rindex(b")") + 2 :].decode().split()


def start_time(pid: int) -> float | None:
    """When the process started (seconds since the epoch), or None if it is gone or a zombie."""
    if pid <= 0:
        return None
    if LINUX:
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return None
        return round(_boot_time() + int(fields[19]) / _CLK_TCK, 2)
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return round(proc.create_time(), 2)
    except psutil.Error:
        return None


def is_alive(pid: int | None, started: float | None) -> bool:
    """True if ``pid`` runs and is the very process that started at ``started``."""
    if not pid or started is None:
        return False
    actual = start_time(pid)
    return actual is not None and abs(actual - started) <= START_TIME_TOLERANCE


def identity(pid: int | None = None) -> tuple[int, float]:
    pid = os.getpid() if pid is None else pid
    started = start_time(pid)
    if started is None:
        raise ProcessLookupError(pid)
    return pid, started


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    if LINUX:
        found: list[int] = []
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return []
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    found.extend(int(x) for x in f.read().split())
            except (OSError, ValueError):
                continue
        return found
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def tree(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc without a full process scan."""
    if not LINUX or not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        return descendants(pid)
    out: list[int] = []
    frontier = [pid]
    while frontier:
        below = [c for p in frontier for c in children(p)]
        out.extend(below)
        frontier = below
    return out


def usage_sample(pids: list[int]) -> tuple[float, int, int]:
    """CPU seconds used so far, resident bytes and live process count of ``pids`` (Linux /proc)."""
    cpu_ticks, rss_pages, count = 0, 0, 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):
            continue
        count += 1
        cpu_ticks += int(fields[11]) + int(fields[12])
        rss_pages += int(fields[21])
    return cpu_ticks / _CLK_TCK, rss_pages * _PAGE_SIZE, count


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first, then theirs)."""
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def session_members(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (the agent's tree keeps it unless it calls setsid)."""
    found = []
    if LINUX:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                fields = _stat_fields(int(entry))
                if fields is not None and fields[0] not in ("Z", "X") and int(fields[3]) == sid:
                    found.append(int(entry))
        return found
    import psutil

    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc.pid)
        except (OSError, psutil.Error):
            pass
    return found


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_tree(pid: int | None, started: float | None, *, include_self: bool = True) -> list[int]:
    """SIGKILL an agent's whole tree: its process group, its session, and every descendant.

    Does nothing unless ``pid`` is still the process that started at ``started``, except for the
    session sweep, which needs the session id the agent was given (its own pid) and is skipped when
    that pid now belongs to another process.
    Returns the pids signalled.
    """
    if not pid:
        return []
    killed: list[int] = []
    alive = is_alive(pid, started)
    targets: set[int] = set()
    if alive:
        targets.update(descendants(pid))
        if include_self:
            targets.add(pid)
        signal_group(pid, signal.SIGKILL)
    elif _taken_by_another(pid, started):
        # the kernel never hands out a pid still in use as a session id, so the agent's session is
        # gone, and the session whose id is this pid belongs to the process that reused it
        return killed
    # the agent was made leader of its own session, so its session id is its pid; members that
    # escaped the process group (a shell's background jobs) still carry it
    targets.update(session_members(pid))
    for target in targets:
        if target != os.getpid() and signal_pid(target, signal.SIGKILL):
            killed.append(target)
    return killed


def _taken_by_another(pid: int, started: float | None) -> bool:
    """True if ``pid`` exists (even as a zombie) and is not provably the process that started at ``started``."""
    if LINUX:
        fields = _stat_fields(pid)
        if fields is None:
            return False
        actual = round(_boot_time() + int(fields[19]) / _CLK_TCK, 2)
    else:
        import psutil

        try:
            actual = round(psutil.Process(pid).create_time(), 2)
        except psutil.Error:
            return False
    return started is None or abs(actual - started) > START_TIME_TOLERANCE


def wait_gone(processes: Iterable[tuple[int, float | None]], timeout: float) -> list[int]:
    """Wait until each (pid, start time) has exited; return the pids still alive at the deadline."""
    pending = {pid: started for pid, started in processes if is_alive(pid, started)}
    deadline = time.monotonic() + timeout
    fds: dict[int, int] = {}
    if hasattr(os, "pidfd_open"):
        for pid in list(pending):
            try:
                fds[os.pidfd_open(pid)] = pid
            except OSError:
                pending.pop(pid, None)
        # the pid may have been reused between the liveness check and pidfd_open
        for fd, pid in list(fds.items()):
            if not is_alive(pid, pending.get(pid)):
                pending.pop(pid, None)
                fds.pop(fd)
                os.close(fd)
    try:
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if fds:
                ready, _, _ = select.select(list(fds), [], [], min(remaining, 0.5))
                for fd in ready:
                    pending.pop(fds.pop(fd), None)
                    os.close(fd)
                # a process that exits as a zombie of a non-reaping parent keeps its pidfd unreadable
                for fd, pid in list(fds.items()):
                    if not is_alive(pid, pending.get(pid)):
                        pending.pop(pid, None)
                        fds.pop(fd)
                        os.close(fd)
            else:
                time.sleep(min(remaining, 0.01))
                pending = {p: s for p, s in pending.items() if is_alive(p, s)}
    finally:
        for fd in fds:
            os.close(fd)
    return list(pending)


def set_child_subreaper() -> bool:
    """Make orphaned descendants reparent to us (Linux), so an agent's stragglers stay findable."""
    if not LINUX:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_CHILD_SUBREAPER = 36
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def set_process_name(name: str) -> None:
    if LINUX:
        try:
            with open("/proc/self/comm", "w") as f:
                f.write(name[:15])
        except OSError:
            pass
