"""Folders a command will write into, checked before it does any work: a refusal after an hour of
loading or tokenizing, or a traceback from deep inside, is what this saves."""

from __future__ import annotations

import os
from pathlib import Path


def writable(path: Path) -> str | None:
    """Why `path` cannot become a folder to write into, or None: checked before any work is done."""
    if path.exists():
        if not path.is_dir():
            return f"{path} is a file, not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{path} is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{path} cannot be made: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be made: {parent} is not writable"
    return None
