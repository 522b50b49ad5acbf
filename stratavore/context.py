"""What every operation needs: where the files are, the settings, and a database connection."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from . import db
from .config import Settings, load_settings
from .paths import Paths, resolve_paths


@dataclass
class Context:
    paths: Paths
    settings: Settings
    _conn: sqlite3.Connection | None = field(default=None, repr=False)

    @classmethod
    def load(cls, environ: dict[str, str] | None = None) -> Context:
        paths = resolve_paths(environ)
        return cls(paths, load_settings(paths.config_file, environ))

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self.paths.ensure()
            self._conn = db.connect(self.paths.db_path, busy_timeout=self.settings.busy_timeout)
        return self._conn

    def close(self) -> None:
        """Close the connection; required before forking, since SQLite connections must not cross a fork."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
