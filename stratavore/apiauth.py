"""The API's secrets and where the running API can be found.

- The **API token** (``sva_...``) opens every route. It is created on first need, kept in the OS keyring
  (service ``stratavore``, user = the profile's data directory) or, where no keyring backend exists,
  in a 0600 file in the config directory. ``stratavore api token`` prints it.
- A **runner token** (``svr_...``) is derived from it for one runner name and opens only the routes an
  agent reports on (hooks and heartbeats, for that runner). Agents get this one, never the API token:
  an agent runs arbitrary code and must not be able to drive the other agents.
- ``api.json`` in the runtime directory (0600) says where the daemon's API listens while it runs, with
  the key runner tokens are derived from, so that a launch can wire http hooks without the keyring.

This module imports nothing heavy: the Claude adapter reads it on every launch.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .paths import Paths

KEYRING_SERVICE = "stratavore"
TOKEN_FILE_NAME = "api-token"
API_INFO_NAME = "api.json"
TOKEN_PREFIX = "sva_"
RUNNER_TOKEN_PREFIX = "svr_"
_RUNNER_KEY_LABEL = b"stratavore runner tokens v1"


def _keyring_backend() -> Any | None:
    """The usable keyring backend, or None where there is none (keyring's `fail` backend, or an empty chain)."""
    try:
        import keyring
        from keyring.backends import chainer, fail
    except ImportError:
        return None
    try:
        backend = keyring.get_keyring()
    except Exception:  # noqa: BLE001 - a broken keyring configuration means "no keyring"
        return None
    if isinstance(backend, fail.Keyring):
        return None
    if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
        return None
    return backend


def token_file(paths: Paths) -> Path:
    return paths.config_dir / TOKEN_FILE_NAME


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def load_token(paths: Paths, *, create: bool = True) -> str | None:
    """The API token: from the keyring, else from the 0600 file; created there on first need."""
    backend = _keyring_backend()
    user = str(paths.data_dir)
    if backend is not None:
        try:
            token = backend.get_password(KEYRING_SERVICE, user)
            if token or not create:
                return token or None
            token = _new_token()
            backend.set_password(KEYRING_SERVICE, user, token)
            return token
        except Exception:  # noqa: BLE001 - a locked or unreachable keyring: fall back to the file
            pass
    return _file_token(token_file(paths), create)


def _file_token(path: Path, create: bool) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if not create:
            return None
        return _create_file_token(path)
    except OSError as e:
        raise ConfigError(f"cannot read the API token file {path}: {e.strerror}") from None
    with os.fdopen(fd) as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise ConfigError(f"the API token file {path} is readable by others; delete it (a new token is made) or chmod 600 it")
        token = f.read().strip()
    if not token.startswith(TOKEN_PREFIX):
        raise ConfigError(f"the API token file {path} does not hold a token; delete it and a new one is made")
    return token


def _create_file_token(path: Path) -> str:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = _new_token()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link, not rename: a token another process created meanwhile wins, and both agree on it
        os.link(tmp, path)
    except FileExistsError:
        return _file_token(path, create=False) or token
    finally:
        tmp.unlink(missing_ok=True)
    return token


def token_location(paths: Paths) -> str:
    """Where the token lives, for `stratavore api token --where` and the docs."""
    backend = _keyring_backend()
    if backend is not None:
        return f"keyring ({type(backend).__module__}.{type(backend).__name__}), service {KEYRING_SERVICE!r}, user {str(paths.data_dir)!r}"
    return f"file {token_file(paths)} (no keyring backend on this system)"


def runner_key(token: str) -> bytes:
    """The key runner tokens are derived from (kept in api.json: it opens nothing but agent reports)."""
    return hmac.new(token.encode(), _RUNNER_KEY_LABEL, hashlib.sha256).digest()


def runner_token(key: bytes, runner_name: str) -> str:
    digest = hmac.new(key, runner_name.encode(), hashlib.sha256).hexdigest()
    return RUNNER_TOKEN_PREFIX + digest


def check_runner_token(key: bytes, runner_name: str, presented: str) -> bool:
    return hmac.compare_digest(runner_token(key, runner_name), presented)


# -- where the running API is ---------------------------------------------------------------------


@dataclass(frozen=True)
class ApiInfo:
    pid: int
    started: float
    url: str | None  # http://127.0.0.1:7878, when listening on TCP
    socket: str | None  # the unix socket's path, when listening on one
    runner_key: str  # hex
    error: str | None = None  # why the daemon's API is not listening

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "socket": self.socket, "error": self.error}


def info_file(paths: Paths) -> Path:
    return paths.runtime_dir / API_INFO_NAME


def write_info(paths: Paths, info: ApiInfo) -> None:
    path = info_file(paths)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        data = {"pid": info.pid, "started": info.started, "url": info.url, "socket": info.socket, "runner_key": info.runner_key}
        json.dump({**data, "error": info.error}, f)
    os.replace(tmp, path)


def write_error(paths: Paths, error: str) -> None:
    """Record why the daemon's API is not listening (shown by `daemon status`)."""
    from . import procs

    pid, started = procs.identity()
    write_info(paths, ApiInfo(pid, started, None, None, "", error))


def remove_info(paths: Paths, pid: int) -> None:
    """Remove api.json if it is ours (a newer daemon's must stay)."""
    current = read_info(paths, check_alive=False)
    if current is None or current.pid == pid:
        info_file(paths).unlink(missing_ok=True)


def read_info(paths: Paths, *, check_alive: bool = True) -> ApiInfo | None:
    """The running API's addresses, or None when no live daemon serves one."""
    try:
        data = json.loads(info_file(paths).read_text())
        info = ApiInfo(
            int(data["pid"]), float(data["started"]), data.get("url"), data.get("socket"), str(data["runner_key"]), data.get("error")
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if check_alive:
        from . import procs

        if not procs.is_alive(info.pid, info.started):
            return None
    return info


@dataclass(frozen=True)
class HookTarget:
    """What an agent needs to report over HTTP: the hooks URL and its runner token."""

    url: str
    token: str


def hook_target(paths: Paths, runner_name: str) -> HookTarget | None:
    """Where a runner's Claude hooks should POST, when the daemon's API listens on TCP; else None
    (Claude Code's http hooks cannot reach a unix socket, and a down daemon would drop every event)."""
    info = read_info(paths)
    if info is None or not info.url or not info.runner_key:
        return None
    return HookTarget(f"{info.url}/v1/hooks/claude", runner_token(bytes.fromhex(info.runner_key), runner_name))
