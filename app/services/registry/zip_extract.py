"""Unpacking an uploaded .zip of a model folder safely: the whole archive is refused on any
unsafe entry (`..`, absolute paths, links, pickles, too deep), only model files are written,
and the bytes really produced are counted against a budget (a zip bomb stops there)."""

from __future__ import annotations

import lzma
import stat
import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from app.core.errors import ValidationFailed
from app.core.settings import get_settings
from app.services.registry.files import is_model_file, is_pickle
from app.services.registry.import_checks import PICKLE_REFUSED


def extract_zip(archive: Path, dest: Path) -> None:
    """Extract a model folder, refusing the whole archive on any unsafe or pickle entry.

    Entries may sit at the top or under one folder; `..`, absolute paths, backslashes and
    symlinks are refused, and only model files are written (flat, by their own name).
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error) as exc:
        raise ValidationFailed("the upload is not a valid zip archive", param="file") from exc
    with zf:
        entries = [i for i in zf.infolist() if not i.is_dir()]
        budget = 10 * get_settings().max_upload_bytes
        pickles: list[str] = []
        for info in entries:
            raw = info.filename
            parts = PurePosixPath(raw).parts
            if (
                raw.startswith("/")
                or "\\" in raw
                or ".." in parts
                or (len(raw) > 1 and raw[1] == ":")
                or "\x00" in raw
            ):
                raise ValidationFailed(
                    f"zip entry {raw[:200]!r} has an unsafe path (absolute or with '..')",
                    param="file",
                )
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ValidationFailed(
                    f"zip entry {raw[:200]!r} is a symbolic link; links are refused", param="file"
                )
            if len(parts) > 2:
                raise ValidationFailed(
                    f"zip entry {raw[:200]!r} is nested too deep; zip one model folder",
                    param="file",
                )
            if is_pickle(parts[-1]):
                pickles.append(parts[-1])
            budget -= info.file_size
            if budget < 0:
                raise ValidationFailed("the archive unpacks to more than allowed", param="file")
        if pickles:
            raise ValidationFailed(PICKLE_REFUSED.format(names=", ".join(pickles)), param="file")
        seen: set[str] = set()
        budget = 10 * get_settings().max_upload_bytes
        for info in entries:
            base = PurePosixPath(info.filename).name
            if not is_model_file(base):
                continue
            if base in seen:
                raise ValidationFailed(f"the archive holds {base!r} twice", param="file")
            seen.add(base)
            budget -= _extract_entry(zf, info, dest / base, budget)


# What reading a damaged or hostile entry raises: a bad CRC, a local header that names another
# file than the central directory, sizes that lie (the data ends early or runs on), corrupt
# compressed data, an encrypted entry (RuntimeError) or an unknown compression method.
_DAMAGED_ENTRY = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    OSError,
    ValueError,
)


def _extract_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Copy one entry to `target`, counting the bytes really produced (not the declared size);
    a damaged entry refuses the whole upload with a 400 naming it. Returns the bytes written."""
    name = info.filename[:200]
    written = 0
    with target.open("wb") as sink:
        try:
            source = zf.open(info)
        except _DAMAGED_ENTRY as exc:
            raise _damaged(name, exc) from None
        with source:
            while True:
                try:
                    chunk = source.read(1024 * 1024)
                except _DAMAGED_ENTRY as exc:
                    raise _damaged(name, exc) from None
                if not chunk:
                    return written
                written += len(chunk)
                if written > budget:
                    raise ValidationFailed("the archive unpacks to more than allowed", param="file")
                sink.write(chunk)


def _damaged(name: str, exc: BaseException) -> ValidationFailed:
    reason = str(exc)[:200] or type(exc).__name__
    return ValidationFailed(
        f"the zip archive is damaged: entry {name!r} cannot be read ({reason})", param="file"
    )
