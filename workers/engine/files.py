"""File-system touches on what the engine writes, so other processes can read it."""

from __future__ import annotations

import re
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
