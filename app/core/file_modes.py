"""Who may read what the product stores: its owner only (datasets, weights, the database).

A probe found the SQLite files 0644 and the artifact folders 0755: any local account could
read every workspace's data and the password hashes. Every process of the product (web,
workers, inference, the CLI; compose runs them all as one user) therefore creates files 0600
and folders 0700, by a umask set before it writes anything, and the data folder itself is kept
0700, which also closes what an older install left readable beneath it.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_UMASK = 0o077
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
# The embedded database and broker, with SQLite's side files: created before this module's
# umask on installs older than it, so their modes are set as well.
_DATABASE_FILES = ("llmide.db", "broker.db")
_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def keep_new_files_private() -> None:
    """From now on this process (and every child it starts) creates files 0600, folders 0700.

    Only ever narrows the umask: a stricter one set by an operator stays.
    """
    previous = os.umask(PRIVATE_UMASK)
    os.umask(previous | PRIVATE_UMASK)


def private_dir(path: Path) -> None:
    """Create `path` (and parents) if needed and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if path.stat().st_mode & 0o777 != PRIVATE_DIR:
        path.chmod(PRIVATE_DIR)


def private_database_files(data_dir: Path) -> None:
    """Make the embedded SQLite files that exist 0600 (new ones are, by the umask)."""
    for name in _DATABASE_FILES:
        for suffix in _SQLITE_SUFFIXES:
            path = data_dir / f"{name}{suffix}"
            try:
                if path.stat().st_mode & 0o777 != PRIVATE_FILE:
                    path.chmod(PRIVATE_FILE)
            except FileNotFoundError:
                continue
