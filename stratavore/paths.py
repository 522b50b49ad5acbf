"""Where Stratavore keeps its files.

``STRATAVORE_HOME`` overrides every path (data, config, runtime, logs) so tests and profiles never
collide; otherwise the platform's user directories are used. ``STRATAVORE_RUNTIME_DIR`` moves just
the sockets, for homes whose paths are too long for a unix socket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

APP = "stratavore"
# sockaddr_un.sun_path is 108 bytes on Linux and 104 on macOS, including the terminating NUL
MAX_SOCKET_PATH = 103


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    config_dir: Path
    runtime_dir: Path
    log_dir: Path

    @property
    def db_path(self) -> Path:
        return self.data_dir / "stratavore.db"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def runner_log_dir(self) -> Path:
        return self.log_dir / "runners"

    @property
    def daemon_pid_file(self) -> Path:
        return self.runtime_dir / "daemon.pid"

    @property
    def daemon_log(self) -> Path:
        return self.log_dir / "daemon.log"

    def runner_log(self, runner_id: str) -> Path:
        return self.runner_log_dir / f"{runner_id}.log"

    def runner_socket(self, runner_id: str) -> Path:
        path = self.runtime_dir / f"{runner_id[:12]}.sock"
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise ConfigError(
                f"runtime directory {self.runtime_dir} is too long for a unix socket; set STRATAVORE_RUNTIME_DIR to a shorter path"
            )
        return path

    def ensure(self) -> None:
        """Create the directories, private to the user."""
        for d in (self.data_dir, self.config_dir, self.runtime_dir, self.log_dir, self.runner_log_dir):
            try:
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"cannot create {d}: {e.strerror}") from None


def _default_runtime_dir() -> Path:
    run_user = Path(f"/run/user/{os.getuid()}")
    if run_user.is_dir() and os.access(run_user, os.W_OK):
        return run_user / APP
    import tempfile

    return Path(tempfile.gettempdir()) / f"{APP}-{os.getuid()}"


def resolve_paths(environ: dict[str, str] | None = None) -> Paths:
    env = os.environ if environ is None else environ
    runtime_override = env.get("STRATAVORE_RUNTIME_DIR")
    home = env.get("STRATAVORE_HOME")
    if home:
        root = Path(home).expanduser().absolute()
        return Paths(
            data_dir=root / "data",
            config_dir=root / "config",
            runtime_dir=Path(runtime_override) if runtime_override else root / "run",
            log_dir=root / "logs",
        )
    import platformdirs

    return Paths(
        data_dir=Path(platformdirs.user_data_dir(APP, appauthor=False)),
        config_dir=Path(platformdirs.user_config_dir(APP, appauthor=False)),
        runtime_dir=Path(runtime_override) if runtime_override else _default_runtime_dir(),
        log_dir=Path(platformdirs.user_log_dir(APP, appauthor=False)),
    )
