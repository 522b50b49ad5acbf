"""Secrets (channel tokens, webhook URLs): the OS keyring, or a 0600 file where no keyring works.

The keyring entry is service ``stratavore``, user ``KEY@<data dir>`` (profiles never share secrets). Where the keyring has no usable backend
(a headless Linux box, a container) or refuses, secrets go to ``<config dir>/secrets.json``, created
0600 and rewritten atomically. Reads try the keyring first, then the file.
``STRATAVORE_KEYRING=off`` skips the keyring altogether.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .paths import Paths

SERVICE = "stratavore"
log = logging.getLogger("stratavore.secrets")


def _keyring() -> Any | None:
    if os.environ.get("STRATAVORE_KEYRING", "").lower() in ("0", "off", "no", "false", "file"):
        return None
    try:
        import keyring
        from keyring.backends import chainer, fail

        backend = keyring.get_keyring()
    except Exception:  # noqa: BLE001 - a broken keyring installation means: use the file
        return None
    if isinstance(backend, fail.Keyring) or (isinstance(backend, chainer.ChainerBackend) and not backend.backends):
        return None
    return backend


def _user(paths: Paths, key: str) -> str:
    # one keyring serves every profile (STRATAVORE_HOME): the data directory tells them apart
    return f"{key}@{paths.data_dir}"


def secrets_file(paths: Paths) -> Path:
    return paths.config_dir / "secrets.json"


def get(paths: Paths, key: str) -> str | None:
    kr = _keyring()
    if kr is not None:
        try:
            value = kr.get_password(SERVICE, _user(paths, key))
        except Exception:  # noqa: BLE001
            value = None
        if value is not None:
            return value
    return _read(paths).get(key)


def put(paths: Paths, key: str, value: str) -> str:
    """Store a secret; returns where it went ("keyring" or the file's path)."""
    kr = _keyring()
    if kr is not None:
        try:
            kr.set_password(SERVICE, _user(paths, key), value)
            # a backend that accepts and forgets (keyring's null backend) is no keyring
            kept = kr.get_password(SERVICE, _user(paths, key)) == value
        except Exception as e:  # noqa: BLE001
            log.info("keyring refused %s (%s); using the secrets file", key, e)
            kept = False
        if kept:
            _update(paths, lambda data: data.pop(key, None))
            return "keyring"
    _update(paths, lambda data: data.__setitem__(key, value))
    return str(secrets_file(paths))


def delete(paths: Paths, key: str) -> None:
    kr = _keyring()
    if kr is not None:
        with contextlib.suppress(Exception):
            kr.delete_password(SERVICE, _user(paths, key))
    _update(paths, lambda data: data.pop(key, None))


def _read(paths: Paths) -> dict[str, str]:
    try:
        data = json.loads(secrets_file(paths).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {secrets_file(paths)}: {e}") from None
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(paths: Paths) -> Iterator[None]:
    paths.ensure()
    fd = os.open(paths.config_dir / ".secrets.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _update(paths: Paths, change: Any) -> None:
    path = secrets_file(paths)
    with _locked(paths):
        data = _read(paths)
        before = dict(data)
        change(data)
        if data == before and path.exists():
            return
        if not data and not path.exists():
            return
        tmp = path.with_name(f".secrets.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
