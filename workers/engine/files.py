"""File-system touches on what the engine writes: readable by other processes, published whole."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_DEFAULT_UMASK = 0o022


def _current_umask() -> int:
    """The process umask, read without os.umask's set-and-restore (racy across threads)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return _DEFAULT_UMASK
    match = re.search(r"^Umask:\s*([0-7]+)$", status, re.MULTILINE)
    return int(match.group(1), 8) if match else _DEFAULT_UMASK


def make_readable(directory: Path) -> None:
    """Grant the read bits the umask allows to every file in a saved model directory.

    safetensors 0.8 writes weights with mode 0600 whatever the umask, which would lock out an
    inference or export process running as another user on the shared artifact volume.
    """
    read_bits = 0o444 & ~_current_umask()
    for path in directory.iterdir():
        if path.is_file():
            mode = path.stat().st_mode & 0o777
            if mode & read_bits != read_bits:
                path.chmod(mode | read_bits)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_dir(staged: Path, target: Path) -> None:
    """Give a completely written folder its final name with one rename.

    Its files are flushed to disk first, so the name never points at data a crash could still
    lose. A folder already at `target` is one no run record points to (a step saved again
    after a resume, a final model whose run died before registering it) and is replaced.
    """
    for path in staged.iterdir():
        if path.is_file():
            _fsync(path)
    _fsync(staged)
    if target.exists():
        shutil.rmtree(target)
    os.rename(staged, target)
    _fsync(target.parent)
