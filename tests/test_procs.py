import os
import subprocess

from stratavore import procs


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_wait_gone_many_processes_and_no_descriptor_leak():
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(6)]
    survivor = subprocess.Popen(["sleep", "30"])
    try:
        identities = [(c.pid, procs.start_time(c.pid)) for c in children]
        before = _fd_count()
        for child in children:
            child.kill()
            child.wait()
        assert procs.wait_gone(identities, timeout=5) == []
        assert _fd_count() == before
        still = procs.wait_gone([(survivor.pid, procs.start_time(survivor.pid))], timeout=0.2)
        assert still == [survivor.pid]
        assert _fd_count() == before
    finally:
        survivor.kill()
        survivor.wait()


def test_identity_is_pid_and_start_time():
    child = subprocess.Popen(["sleep", "30"])
    try:
        started = procs.start_time(child.pid)
        assert procs.is_alive(child.pid, started)
        assert not procs.is_alive(child.pid, started - 100)
        assert not procs.is_alive(child.pid, None)
    finally:
        child.kill()
        child.wait()
    assert not procs.is_alive(child.pid, started)
