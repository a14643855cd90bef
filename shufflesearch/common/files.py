"""Output folders: made on demand and proven writable before any work is spent on them."""

from __future__ import annotations

import uuid
from pathlib import Path

from ..errors import UserError


def prepare_out_dir(out: Path, error: type[UserError] = UserError) -> Path:
    """Create ``out`` if needed and prove it writable, or raise ``error`` naming it."""
    if out.exists() and not out.is_dir():
        raise error(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise error(f"--out {out}: cannot write there ({e.strerror or e.__class__.__name__})") from None
    return out
