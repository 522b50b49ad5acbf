"""Validation of the names users give projects and runners."""

from __future__ import annotations

import re

from .errors import InvalidInput

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def validate_name(kind: str, name: str) -> str:
    """Names become file names, socket names and metric labels: keep them short and plain."""
    if not _NAME.match(name or "") or name.endswith((".", "-")) or ".." in name:
        raise InvalidInput(f"invalid {kind} name {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name
