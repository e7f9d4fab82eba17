"""Putting written files on disk before a rename publishes them: after a node crash or a power loss,
a renamed folder must not hold files of the right size whose blocks were never written."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_tree(folder: Path) -> None:
    """Every file under ``folder``, then the folder itself, on disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fsync(path)
    fsync(folder)


def fsync(path: Path) -> None:
    """A file's data, or a folder's entries (a rename into it, a new file), on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
