"""Runner states, the sets they fall into and the transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class RunnerState(StrEnum):
    STARTING = "starting"  # row written, keeper not yet running the agent
    RUNNING = "running"  # the agent runs under its keeper
    BACKOFF = "backoff"  # the agent exited; the keeper waits before restarting it
    STOPPING = "stopping"  # a stop was requested; the keeper is ending the agent's tree
    EXITED = "exited"  # the agent ended on its own; exit code or signal recorded
    STOPPED = "stopped"  # ended on request
    FAILED = "failed"  # could not start, or gave up restarting
    LOST = "lost"  # the keeper vanished (crash, kill -9, reboot); the agent tree was killed

    def __str__(self) -> str:
        return self.value


ACTIVE = frozenset({RunnerState.STARTING, RunnerState.RUNNING, RunnerState.BACKOFF, RunnerState.STOPPING})
ENDED = frozenset(set(RunnerState) - ACTIVE)

_S = RunnerState
TRANSITIONS: dict[RunnerState, frozenset[RunnerState]] = {
    _S.STARTING: frozenset({_S.RUNNING, _S.FAILED, _S.LOST, _S.STOPPING, _S.STOPPED}),
    _S.RUNNING: frozenset({_S.BACKOFF, _S.STOPPING, _S.EXITED, _S.FAILED, _S.LOST, _S.STOPPED}),
    _S.BACKOFF: frozenset({_S.RUNNING, _S.STOPPING, _S.STOPPED, _S.FAILED, _S.LOST}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.LOST}),
    # an ended runner is started again by `restart`
    _S.EXITED: frozenset({_S.STARTING}),
    _S.STOPPED: frozenset({_S.STARTING}),
    _S.FAILED: frozenset({_S.STARTING}),
    _S.LOST: frozenset({_S.STARTING}),
}

ACTIVE_VALUES = tuple(sorted(s.value for s in ACTIVE))


def can_transition(old: RunnerState, new: RunnerState) -> bool:
    return new in TRANSITIONS[old]
