"""The latency cache: one figure per (archid, target spec, timing version, fingerprint), shared
by every run, and the log of the reference network's absolute timings (the reference schedule)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError
from ..model import compile as _compile
from ..model import units as _units
from .env import cache_dir, fingerprint_id
from .target import PROTOCOL_VERSION, REFERENCE_ARCH, Latency, TargetSpec, stable_hash

# The source of the inference form: BN folding, the merged shuffle, memory format. A change to
# any of it changes what is timed, so its hash is part of the key (an edited to_inference
# never serves a figure taken with the old code).
TIMED_CODE: tuple[str, ...] = (_units.__file__, _compile.__file__)


def timing_version() -> str:
    """A version of everything that changes a timing besides the spec and the environment:
    the inference form's code, the protocol and the reference it is relative to."""
    h = hashlib.sha256()
    for f in TIMED_CODE:
        h.update(Path(f).read_bytes())
    return stable_hash({"code": h.hexdigest()[:16], "protocol": PROTOCOL_VERSION, "reference": REFERENCE_ARCH})


def cache_key(spec: TargetSpec) -> str:
    return stable_hash([spec.key(), timing_version()])


# A claim older than this belongs to a process that died or hangs: a window lasts seconds (its
# cap, twice when a drifted window is re-timed), plus the wait for the timing lock.
CLAIM_STALE_S = 120.0


# --- the cache ----------------------------------------------------------------------------------


class LatencyCache:
    """Measured figures keyed by (archid, cache_key(spec), fingerprint_id); one SQLite file
    shared by every worker (WAL mode and a busy timeout make concurrent writers wait, not fail).
    The same file logs the reference's absolute timings per (cache_key, fingerprint)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / "latency.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS latency (archid TEXT, spec_key TEXT, fp_id TEXT,"
                " record TEXT NOT NULL, created REAL, PRIMARY KEY (archid, spec_key, fp_id))"
            )
            db.execute("CREATE TABLE IF NOT EXISTS reference_log (spec_key TEXT, fp_id TEXT, ms REAL, created REAL)")
            db.execute("CREATE TABLE IF NOT EXISTS claims (archid TEXT, spec_key TEXT, fp_id TEXT, owner TEXT,"
                       " created REAL, PRIMARY KEY (archid, spec_key, fp_id))")

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
                (archid, cache_key(spec), fingerprint_id(fp)),
            ).fetchone()
        if row is None:
            return None
        lat = Latency.from_dict(json.loads(row[0]))
        lat.cached = True
        return lat

    def put(self, archid: str, spec: TargetSpec, lat: Latency, measured_at: float | None = None) -> None:
        """Store a figure, stamped with when its measurement began (``measured_at``, default
        now). A late write (a worker suspended mid-measurement) never replaces a figure whose
        measurement began later."""
        rec = {**lat.to_dict(), "cached": False}
        with self._connect() as db:
            db.execute(
                "INSERT INTO latency VALUES (?, ?, ?, ?, ?) ON CONFLICT (archid, spec_key, fp_id) DO UPDATE"
                " SET record = excluded.record, created = excluded.created WHERE excluded.created >= latency.created",
                (archid, cache_key(spec), fingerprint_id(lat.fingerprint), json.dumps(rec),
                 time.time() if measured_at is None else measured_at),
            )

    # --- claims: one process times an entry, the others wait for its figure ---------------------

    def claim(self, archid: str, spec: TargetSpec, fp: dict, owner: str, stale_s: float = CLAIM_STALE_S) -> bool:
        """Claim the entry for timing; False while another owner's claim younger than
        ``stale_s`` holds it (an older one belongs to a dead or stuck process: taken over)."""
        key = (archid, cache_key(spec), fingerprint_id(fp))
        now = time.time()
        with self._connect() as db:
            db.execute("DELETE FROM claims WHERE archid=? AND spec_key=? AND fp_id=? AND created < ?",
                       (*key, now - stale_s))
            db.execute("INSERT OR IGNORE INTO claims VALUES (?, ?, ?, ?, ?)", (*key, owner, now))
            row = db.execute("SELECT owner FROM claims WHERE archid=? AND spec_key=? AND fp_id=?", key).fetchone()
        return row is not None and row[0] == owner

    @contextlib.contextmanager
    def claimed(self, archid: str, spec: TargetSpec, fp: dict) -> Iterator[Latency | None]:
        """Hold the entry's claim while this process times it (yields None), so that two
        studies sharing the cache never time one architecture at once; yields the figure
        instead when another process has (or meanwhile writes) it."""
        owner = f"{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"
        while True:
            hit = self.get(archid, spec, fp)
            if hit is not None:
                yield hit
                return
            if self.claim(archid, spec, fp, owner):
                break
            time.sleep(0.1)
        try:
            yield self.get(archid, spec, fp)  # written before the claim: nothing to time
        finally:
            self.release(archid, spec, fp, owner)

    def release(self, archid: str, spec: TargetSpec, fp: dict, owner: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM claims WHERE archid=? AND spec_key=? AND fp_id=? AND owner=?",
                       (archid, cache_key(spec), fingerprint_id(fp), owner))

    def __len__(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM latency").fetchone()[0]

    # --- the reference schedule's log -----------------------------------------------------------

    def log_reference(self, spec: TargetSpec, fp: dict, ms: float) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO reference_log VALUES (?, ?, ?, ?)",
                       (cache_key(spec), fingerprint_id(fp), float(ms), time.time()))

    def reference_history(self, spec: TargetSpec, fp: dict, last: int) -> list[float]:
        """The reference's last ``last`` absolute timings on this spec and machine, oldest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT ms FROM reference_log WHERE spec_key=? AND fp_id=? ORDER BY created DESC, rowid DESC LIMIT ?",
                (cache_key(spec), fingerprint_id(fp), last),
            ).fetchall()
        return [r[0] for r in reversed(rows)]
