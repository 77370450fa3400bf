"""Atomic file writes: a reader (or a resumed run) only ever sees whole files. Also
:func:`dangling_symlink`, the reason a symlink leads nowhere."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def commit_files(files: dict[Path, bytes], marker: Path) -> None:
    """Write several files so that readers see either the old set or the new one, never a mix.

    All contents are written to temp files first (a failure there leaves the old files alone);
    then ``marker`` (the file whose presence makes the set valid) is removed, the others are
    renamed into place, and ``marker`` is renamed last.
    """
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if marker.exists():
            marker.unlink()
        for tmp, path in sorted(temps, key=lambda tp: tp[1] == marker):
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def read_json_header(file: Path, fmt: str, max_version: int, what: str, fix: str, damaged: type[Exception]) -> dict:
    """Read a ``{"format": fmt, "version": n, ...}`` header; clear errors for every way it can be wrong."""
    import json

    from imer.errors import BadInput

    try:
        header = json.loads(Path(file).read_text())
    except (ValueError, OSError) as e:
        raise damaged(f"{file}: unreadable ({e}); the {what} is damaged: {fix}") from None
    found = header.get("format") if isinstance(header, dict) else type(header).__name__
    if found != fmt:
        raise BadInput(f"{file}: format {found!r} is not {fmt!r}")
    version = header.get("version", 0)
    if not isinstance(version, int) or version > max_version:
        raise BadInput(f"{file}: {what} version {version!r} is newer than this imer reads ({max_version}); upgrade imer")
    return header


def dangling_symlink(path: str | Path) -> str | None:
    """Why ``path`` is a symlink that leads nowhere ("target of symlink X (-> T) does not exist"),
    or None when it is not one. ``Path.exists()`` is False for such a link, and a plain "not
    found" would hide that the link itself is there."""
    path = Path(path)
    if not path.is_symlink() or path.exists():
        return None
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises this for a loop
        return f"symlink {path} (-> {target}) is a loop"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"symlink {path} (-> {target}) is a loop"
    return f"target of symlink {path} (-> {target}) does not exist"
