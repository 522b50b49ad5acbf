from stratavore import supervisor
from stratavore.runners import get
from stratavore.states import RunnerState


def test_launch_and_stop(ctx, project):
    result = supervisor.launch(ctx, "web", ["sleep", "100"])
    [runner] = result.started
    assert runner.state == RunnerState.RUNNING
    [done] = supervisor.stop(ctx, [runner])
    assert done.state == RunnerState.STOPPED
    assert get(ctx.conn, runner.id).exit_signal == "SIGTERM"
