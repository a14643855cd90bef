"""Files on disk: output folders made on demand and proven writable before any work is spent on
them, and files replaced whole (``atomic_write``), never seen half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError

__all__ = ["atomic_write", "prepare_out_dir"]


def prepare_out_dir(out: Path, error: type[UserError] = UserError) -> Path:
    """Create ``out`` if needed and prove it writable, or raise ``error`` naming it (as the
    field ``out_dir``, the argument every caller takes it as)."""
    if out.exists() and not out.is_dir():
        raise error("exists and is not a directory", field="out_dir", value=out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise error(f"cannot write there ({e.strerror or e.__class__.__name__})", field="out_dir",
                    value=out) from None
    return out


def atomic_write(path: str | Path, data: str | bytes | Callable[[Path], object], *,
                 encoding: str = "utf-8") -> Path:
    """Replace ``path`` with new content in one step: a reader (another worker, a resumed run)
    sees the old file or the new one, never a part, and a crash leaves the old one in place.

    ``data`` is the content (``str``, written with ``encoding``, or ``bytes``), or a writer
    called with a temporary path to write the file itself (an exporter, ``torch.save``). The
    temporary file lies in a private folder beside ``path``, under ``path``'s own name (some
    writers name what is inside after the file), so ``os.replace`` stays on one file system;
    it is flushed to disk (fsync) before it replaces ``path``. Returns ``path``."""
    path = Path(path)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp = stage / path.name
    try:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data.encode(encoding) if isinstance(data, str) else data)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes are on disk before the name points at them
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return path
