"""The run folder runs/NAME: its config, its Optuna storage (SQLite inside it, or an RDB URL), and
its log. A folder belongs to exactly one search space."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import socket
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
import yaml
from optuna.trial import TrialState

from ..common.yamlio import Located, parse_yaml
from ..errors import UserError
from .faults import fault_point
from .space import SearchSpace, parse_space

# The heartbeat API is marked experimental, and using it outside Study.optimize warns; both
# are deliberate here (ask/tell is how we keep the budget exact across workers).
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
optuna.logging.set_verbosity(optuna.logging.WARNING)

log = logging.getLogger("shufflesearch.search")

HEARTBEAT_S = 2.0  # a worker records a heartbeat this often while a trial runs
GRACE_S = 8.0  # a RUNNING trial without heartbeat for this long belongs to a dead worker
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# --- run folder -----------------------------------------------------------------------------


@dataclass
class Run:
    root: Path  # runs/NAME
    name: str
    storage_url: str
    space: SearchSpace

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def storage(self) -> optuna.storages.BaseStorage:
        return make_storage(self.storage_url)

    def load_study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=self.storage())


def check_name(name: str) -> str:
    if not _NAME_RE.match(name) or ".." in name:
        raise UserError(
            f"--name {name!r}: use letters, digits, '.', '_' and '-' only (a run stays inside runs/)"
        )
    return name


def _pg_driver(url: str) -> str:
    """SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; where only psycopg2 (the
    driver this project's extras install) is present, say so in the URL."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare) and importlib.util.find_spec("psycopg") is None \
                and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len(bare):]
    return url


def make_storage(url: str) -> optuna.storages.BaseStorage:
    url = _pg_driver(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Many local workers share one file: wait for the lock instead of failing.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    for attempt in range(5):
        try:
            st = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=int(HEARTBEAT_S),
                grace_period=int(GRACE_S),
                heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=3),
                **kwargs,
            )
            _TABLES.create_all(st.engine, checkfirst=True)
            return st
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError) as e:
            # Workers (or a reader such as `pareto`) started together on an empty database race
            # to create the tables (SQLite says "table ... already exists", PostgreSQL raises an
            # IntegrityError); the loser finds them made on the next try.
            if isinstance(e, sa.exc.OperationalError) and "already exists" not in str(e):
                raise UserError(f"cannot open storage {url}: {str(e).splitlines()[0]}") from None
            if attempt == 4:
                raise UserError(f"cannot open storage {url}: its tables could not be created") from None
            time.sleep(0.5 * (attempt + 1))
        except Exception as e:  # bad URL, server down, missing driver
            raise UserError(f"cannot open storage {url}: {str(e).splitlines()[0]}") from None
    raise AssertionError("unreachable")


class RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker died, minus the dead trial's user attributes: its
    half-written results and its archid are not the retry's (a retry that dies inside ask()
    would otherwise look like a trial that got as far as sampling). A baseline is not queued:
    the next ``evaluate_baselines`` takes its claim over."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get("baseline"):
            return
        keep = {k: v for k, v in trial.system_attrs.items() if k in ("failed_trial", "retry_history")}
        bare = optuna.trial.create_trial(state=TrialState.FAIL, params=trial.params,
                                         distributions=trial.distributions, system_attrs=keep)
        bare.number = trial.number
        super().__call__(study, bare)


# --- claims: one row per (study, key), taken atomically ---------------------------------------
# The RDB's primary key makes "insert if absent" atomic on SQLite and PostgreSQL alike, so a
# claim holds whatever the interleaving of workers and machines. Every claim is owned by a trial
# (its Optuna trial_id); when that trial ends FAIL or PRUNED (its worker died and it went stale,
# or it raised) the claim is dead and the next claimant takes it over with a compare-and-set.

_TABLES = sa.MetaData()
_CLAIMS = sa.Table(
    "shufflesearch_claims", _TABLES,
    sa.Column("study_id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("owner", sa.Integer, nullable=False),  # trial_id of the claiming trial
)


def _engine(storage: Any) -> sa.engine.Engine:
    """The SQLAlchemy engine of a run's storage (load_study wraps it in a cache)."""
    return getattr(storage, "_backend", storage).engine


def claims(storage: Any, study_id: int, prefix: str) -> dict[str, int]:
    """key -> owner trial_id for every claim of the study whose key starts with ``prefix``."""
    c = _CLAIMS.c
    with _engine(storage).connect() as con:
        rows = con.execute(sa.select(c.key, c.owner).where(
            c.study_id == study_id, c.key.startswith(prefix, autoescape=True))).all()
    return {k: o for k, o in rows}


def claim(storage: Any, study_id: int, key: str, trial_id: int,
          dead: Callable[[int], bool]) -> int:
    """Claim ``key`` for trial ``trial_id``; returns the owner afterwards (``trial_id`` when
    this trial holds it). A claim whose owner ``dead(owner)`` says is dead is taken over."""
    c = _CLAIMS.c
    eng = _engine(storage)
    for _ in range(10):
        try:
            with eng.begin() as con:
                con.execute(_CLAIMS.insert().values(study_id=study_id, key=key, owner=trial_id))
            return trial_id
        except sa.exc.IntegrityError:
            pass
        with eng.connect() as con:
            owner = con.execute(sa.select(c.owner).where(c.study_id == study_id, c.key == key)).scalar()
        if owner is None:
            continue  # released between the two statements: insert again
        if owner == trial_id or not dead(owner):
            return owner
        with eng.begin() as con:  # compare-and-set: only if nobody took it over meanwhile
            n = con.execute(_CLAIMS.update().where(c.study_id == study_id, c.key == key,
                                                   c.owner == owner).values(owner=trial_id)).rowcount
        if n == 1:
            log.info("claim %s: taken over from dead trial id %d", key, owner)
            return trial_id
    raise RuntimeError(f"claim {key}: no stable owner after 10 tries")


# --- steps: work done once per study by one process, not by a trial ---------------------------
# The end of a run (re-timing, short training, the self-check) and the latency limit's
# conversion are done by one process of all those sharing the study; the others wait for it.
# The holder bumps ``beat`` every HEARTBEAT_S; a claim whose beat has not moved for GRACE_S on
# the waiter's own clock (no clocks are compared across machines) belongs to a dead process and
# is taken over with a compare-and-set, as a dead trial's slot is. ``done`` marks it finished.

_STEPS = sa.Table(
    "shufflesearch_steps", _TABLES,
    sa.Column("study_id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False),  # host:pid:random of the holder
    sa.Column("beat", sa.Integer, nullable=False),  # bumped while the holder lives
    sa.Column("done", sa.Boolean, nullable=False),
)


def _beat(eng: sa.engine.Engine, study_id: int, key: str, me: str, stop: threading.Event,
          name: str) -> None:
    c = _STEPS.c
    while not stop.wait(HEARTBEAT_S):
        fault_point(name)  # a kill -9 in the middle of the step (bench/fault_injection.py)
        with eng.begin() as con:
            n = con.execute(_STEPS.update().where(c.study_id == study_id, c.key == key, c.owner == me)
                            .values(beat=c.beat + 1)).rowcount
        if n == 0:
            log.warning("step %s: taken over by another process (this one sent no heartbeat for "
                        "over %d s); both finish it, the later result is kept", key, int(GRACE_S))
            return


def step_state(storage: Any, study_id: int, key: str) -> dict[str, Any] | None:
    """{"owner", "beat", "done"} of a step's claim, or None when nobody has claimed it."""
    c = _STEPS.c
    with _engine(storage).connect() as con:
        row = con.execute(sa.select(c.owner, c.beat, c.done).where(c.study_id == study_id, c.key == key)).first()
    return None if row is None else {"owner": row[0], "beat": row[1], "done": bool(row[2])}


def run_step(storage: Any, study_id: int, key: str, fn: Callable[[], Any], *, name: str | None = None,
             say: Callable[[str], None] | None = None, poll_s: float = 0.5) -> tuple[bool, Any]:
    """Run ``fn`` as step ``key`` of the study unless another process did or is doing it:
    returns (True, fn()) when this process ran it, (False, None) when it was done elsewhere
    (waited for when it was running). ``name`` is the fault point reached on claiming the step
    and at every heartbeat while it runs."""
    name = name or key
    c = _STEPS.c
    eng = _engine(storage)
    me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    seen: tuple[str, int] | None = None
    since = time.monotonic()
    told = False
    while True:
        mine = False
        row = step_state(storage, study_id, key)
        if row is None:
            try:
                with eng.begin() as con:
                    con.execute(_STEPS.insert().values(study_id=study_id, key=key, owner=me, beat=0, done=False))
                mine = True
            except sa.exc.IntegrityError:
                continue  # another process claimed it first: read its claim
        elif row["done"]:
            return False, None
        else:
            now = (row["owner"], row["beat"])
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since > GRACE_S:
                with eng.begin() as con:  # compare-and-set: only if it is still the stale claim
                    mine = con.execute(_STEPS.update().where(
                        c.study_id == study_id, c.key == key, c.owner == row["owner"], c.beat == row["beat"],
                        c.done.is_(False)).values(owner=me, beat=0)).rowcount == 1
                if mine:
                    log.info("step %s: taken over from %s (no heartbeat for %d s)", key, row["owner"], int(GRACE_S))
            if not mine:
                if say and not told:
                    say(f"waiting for {key}: another process ({row['owner']}) is doing it")
                    told = True
                time.sleep(poll_s)
                continue
        fault_point(name)
        stop = threading.Event()
        th = threading.Thread(target=_beat, args=(eng, study_id, key, me, stop, name), daemon=True)
        th.start()
        try:
            out = fn()
        except BaseException:
            with eng.begin() as con:  # failed here (not killed): free it for the next process now
                con.execute(_STEPS.delete().where(c.study_id == study_id, c.key == key, c.owner == me))
            raise
        finally:
            stop.set()
            th.join()
        with eng.begin() as con:
            con.execute(_STEPS.update().where(c.study_id == study_id, c.key == key).values(done=True))
        return True, out


def trial_state(storage: Any, trial_id: int) -> TrialState | None:
    """The trial's state read from the database itself (None if it does not exist)."""
    try:
        return getattr(storage, "_backend", storage).get_trial(trial_id).state
    except KeyError:
        return None


def _sqlite_wal(path: Path) -> None:
    """WAL lets readers (progress, dashboard) run beside the writers; it persists in the file."""
    con = sqlite3.connect(path, timeout=60)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def open_run(space: SearchSpace, name: str | None = None, runs_root: str | Path = "runs",
             storage: str | None = None, create: bool = True) -> Run:
    """runs/NAME for ``space``: created on first use, refused if it belongs to another space."""
    name = check_name(space.name if name is None else name)
    root = Path(runs_root) / name
    cfg = root / "config.yaml"
    fp = space.fingerprint()
    if cfg.exists():
        try:
            old = parse_yaml(cfg.read_text(), str(cfg)) or {}
        except (OSError, ValueError, yaml.YAMLError) as e:  # ValueError: not UTF-8
            raise UserError(f"{cfg}: unreadable run config ({e.__class__.__name__}); use a new --name") from None
        if not isinstance(old, dict) or old.get("fingerprint") != fp:
            raise UserError(
                f"{root} holds a run of a different search space (or a changed one); "
                f"use a new --name, or delete {root} to start over"
            )
        url = storage or old.get("storage")
    else:
        if not create:
            raise UserError(f"{root}: no such run")
        if storage:
            make_storage(storage)  # a bad URL fails before anything is written
        root.mkdir(parents=True, exist_ok=True)
        url = storage or f"sqlite:///{(root / 'study.db').as_posix()}"
        if url.startswith("sqlite:///"):
            _sqlite_wal(Path(url[len("sqlite:///"):]))
        doc = {"fingerprint": fp, "space_file": space.path, "storage": url, "config": space.raw}
        tmp = cfg.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, cfg)  # atomic: a crash never leaves half a config
    run = Run(root, name, url, space)
    st = run.storage()
    study = optuna.create_study(
        study_name=name, storage=st, load_if_exists=True,
        directions=[d for _, d in space.objectives],
    )
    if not study.user_attrs.get("space_fingerprint"):
        study.set_user_attr("space_fingerprint", fp)
        study.set_user_attr("objectives", [n for n, _ in space.objectives])
    elif study.user_attrs["space_fingerprint"] != fp:
        raise UserError(f"storage {url} holds study '{name}' of a different search space; use a new --name")
    return run


def load_run(path: str | Path) -> tuple[Run, optuna.Study]:
    """Open an existing run folder (for pareto/report/export)."""
    root = Path(path)
    cfg = root / "config.yaml"
    if not root.is_dir():
        raise UserError(f"{root}: no such run folder")
    if not cfg.exists():
        raise UserError(f"{root}: not a shufflesearch run (no config.yaml)")
    try:
        doc = parse_yaml(cfg.read_text(), str(cfg))
        url = doc["storage"]
    except Exception:
        raise UserError(f"{cfg}: unreadable run config") from None
    space = _space_from_config(doc, root)
    run = Run(root, root.name, url, space)
    try:
        study = run.load_study()
    except KeyError:
        raise UserError(f"{root}: the study is missing from {url}") from None
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{root}: cannot open the study ({str(e).splitlines()[0]})") from None
    return run, study


def _space_from_config(doc: dict, root: Path) -> SearchSpace:
    raw = dict(doc.get("config") or {})
    raw["objectives"] = [n for n, _ in raw.get("objectives", [])] or ["proxy", "latency"]
    return parse_space(Located(raw, {}, str(root / "config.yaml")))


def _setup_log(run: Run, worker: int | None = None) -> None:
    """Log to this run's run.log: a process that runs several searches (the Python API, the
    tests) must not keep writing into the first run's file. A spawned worker's lines carry its
    number (``w1``) after the pid."""
    path = (run.root / "run.log").resolve()
    root = logging.getLogger("shufflesearch")
    for x in list(root.handlers):
        if isinstance(x, logging.FileHandler):
            if Path(x.baseFilename) == path:
                return
            root.removeHandler(x)
            x.close()
    h = logging.FileHandler(path)
    who = f"pid{os.getpid()}" + ("" if worker is None else f" w{worker}")
    h.setFormatter(logging.Formatter(f"%(asctime)s {who} %(levelname)s %(message)s"))
    root.addHandler(h)
    root.setLevel(logging.INFO)
