"""The latency cache: one figure per (archid, target spec, fingerprint), shared by every run."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError
from .env import cache_dir, fingerprint_id
from .target import Latency, TargetSpec

# --- the cache ----------------------------------------------------------------------------------


class LatencyCache:
    """Measured figures keyed by (archid, spec.key(), fingerprint_id); one SQLite file shared by
    every worker (WAL mode and a busy timeout make concurrent writers wait, not fail)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "latency.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS latency (archid TEXT, spec_key TEXT, fp_id TEXT,"
                " record TEXT NOT NULL, created REAL, PRIMARY KEY (archid, spec_key, fp_id))"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=60)
        except sqlite3.Error as e:
            raise UserError(f"{self.path}: cannot open the latency cache ({e})") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                yield db
        finally:
            db.close()

    def get(self, archid: str, spec: TargetSpec, fp: dict) -> Latency | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT record FROM latency WHERE archid=? AND spec_key=? AND fp_id=?",
                (archid, spec.key(), fingerprint_id(fp)),
            ).fetchone()
        if row is None:
            return None
        lat = Latency.from_dict(json.loads(row[0]))
        lat.cached = True
        return lat

    def put(self, archid: str, spec: TargetSpec, lat: Latency) -> None:
        rec = {**lat.to_dict(), "cached": False}
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO latency VALUES (?, ?, ?, ?, ?)",
                (archid, spec.key(), fingerprint_id(lat.fingerprint), json.dumps(rec), time.time()),
            )

    def __len__(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM latency").fetchone()[0]
