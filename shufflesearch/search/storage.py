"""The one door to a run's Optuna storage.

Every read and write of a trial's or a study's user attributes, the claims and steps tables
beside Optuna's, and every use of Optuna's private API (a study's storage and id, a trial's
storage id, the cache around the database) live here and nowhere else in the package
(tests/test_layout.py checks it). Trial attributes are named by ``TrialRecord`` fields, study
attributes by ``STUDY_ATTRS``; a stored trial becomes a record in one place, ``read_record``.

Trials are named two ways: by ``number`` (what users see) and by their storage id (what the
storage API takes; ``trial_id``). Functions that take a ``tid`` mean the storage id.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError, first_line
from .faults import fault_point
from .records import STATES, TrialRecord

log = logging.getLogger("shufflesearch.search")

# The heartbeat API is marked experimental, and using it outside Study.optimize warns; both
# are deliberate here (ask/tell is how we keep the budget exact across workers).
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
optuna.logging.set_verbosity(optuna.logging.WARNING)

HEARTBEAT_S = 2.0  # a worker records a heartbeat this often while a trial runs
GRACE_S = 8.0  # a RUNNING trial without heartbeat for this long belongs to a dead worker
# Optuna 5 takes constraints per trial (Trial.set_constraint, read by every sampler) and
# deprecates the samplers' constraints_func; Optuna 4 has only the latter.
PER_TRIAL_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")
# Study user attributes: name -> what it holds.
STUDY_ATTRS = {
    "space_fingerprint": "the search space's fingerprint (runfolder.open_run)",
    "launches": "each launch of the run: time, host, budget, workers asked and resolved (engine)",
    "objectives": "the objective names, in Optuna's order",
    "latency_limit": "the latency_ms limit on the ratio yardstick (objective.latency_limit)",
    "retime": "the end-of-run side-by-side re-timing (retime.py)",
    "short_train": "short-training results by trial number (baselines.short_train_front)",
    "check": "the ladder's self-check report (ladder.run_check)",
    "check_runs": "the self-check's trainings by archid, as they finish",
}
_WORKER = "shufflesearch:worker"  # system attr: who runs this trial (never copied by retries)
_FINAL = "shufflesearch:final"  # system attr: this baseline trial ended by its own evaluation


# --- opening --------------------------------------------------------------------------------


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
                raise UserError(f"cannot open storage {url}: {first_line(e)}") from None
            if attempt == 4:
                raise UserError(f"cannot open storage {url}: its tables could not be created") from None
            time.sleep(0.5 * (attempt + 1))
        except Exception as e:  # bad URL, server down, missing driver
            raise UserError(f"cannot open storage {url}: {first_line(e)}") from None
    raise AssertionError("unreachable")


class RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker died, minus the dead trial's user attributes: its
    half-written results and its archid are not the retry's (a retry that dies inside ask()
    would otherwise look like a trial that got as far as sampling). A baseline is not queued:
    the next ``evaluate_baselines`` takes its claim over."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if is_baseline(trial):
            return
        keep = {k: v for k, v in trial.system_attrs.items() if k in ("failed_trial", "retry_history")}
        bare = optuna.trial.create_trial(state=TrialState.FAIL, params=trial.params,
                                         distributions=trial.distributions, system_attrs=keep)
        bare.number = trial.number
        super().__call__(study, bare)


def _st(study: optuna.Study) -> Any:
    return study._storage


def _db(study: optuna.Study) -> Any:
    """The storage under load_study's per-process cache: what other processes see."""
    st = study._storage
    return getattr(st, "_backend", st)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's storage id (what the storage API and the claims take), not its number."""
    return trial._trial_id


# --- reading trials -----------------------------------------------------------------------------


def read_record(t: FrozenTrial) -> TrialRecord:
    """The record of a stored trial: THE reader (records.TrialRecord.from_user_attrs parses)."""
    named = {k.split(":", 1)[1]: v for k, v in t.system_attrs.items() if k.startswith("constraints:")}
    return TrialRecord.from_user_attrs(t.user_attrs, trial=t.number, state=t.state.name,
                                       named_constraints=named)


def read_records(trials: Iterable[FrozenTrial]) -> list[TrialRecord]:
    """One record per finished trial, sorted by trial number (RUNNING and WAITING trials are
    left out: nothing about them is known yet)."""
    return [read_record(t) for t in sorted(trials, key=lambda t: t.number) if t.state.name in STATES]


def study_records(study: optuna.Study) -> list[TrialRecord]:
    return read_records(study.get_trials(deepcopy=False))


def archid_of(t: FrozenTrial) -> str | None:
    """The trial's archid, without reading the whole record (for loops that poll every trial)."""
    return t.user_attrs.get("archid")


def is_baseline(t: FrozenTrial) -> bool:
    return bool(t.user_attrs.get("baseline"))


def search_trials(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
    """The study's trials that are not baselines, in ``states`` (default: all)."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if not is_baseline(t)]


def stored_trial(study: optuna.Study, tid: int) -> FrozenTrial | None:
    """The trial as the database holds it now (None if it does not exist)."""
    try:
        return _db(study).get_trial(tid)
    except KeyError:
        return None


def trial_state(study: optuna.Study, tid: int) -> TrialState | None:
    """The trial's state read from the database itself (None if it does not exist)."""
    t = stored_trial(study, tid)
    return None if t is None else t.state


def is_final(t: FrozenTrial) -> bool:
    """A baseline trial that ended by its own evaluation (``end_trial(final=True)``)."""
    return bool(t.system_attrs.get(_FINAL))


def started_by_worker(t: FrozenTrial) -> bool:
    """A worker marked this trial (``mark_started``), not a retry copying the mark."""
    return (t.system_attrs.get(_WORKER) or {}).get("trial_id") == t._trial_id


def fail_own_running(study: optuna.Study, reason: str) -> None:
    """Fail the RUNNING trials that this process marked as started, with ``reason`` (a worker
    interrupted around a trial's evaluation, whose heartbeat would otherwise have to go stale)."""
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        mark = t.system_attrs.get(_WORKER) or {}
        if started_by_worker(t) and all(mark.get(k) == v for k, v in me.items()):
            end_trial(study, t._trial_id, TrialState.FAIL, reason=reason)


# --- writing trials -----------------------------------------------------------------------------


def write_fields(study: optuna.Study, tid: int, rec: TrialRecord | None = None, **fields: Any) -> None:
    """Store record fields on trial ``tid``: the given ones (``name=value``, typed as in
    TrialRecord), or every stored field of ``rec`` that is set. With ``rec``, fault point
    ``storage`` is reached half-way when the fault is armed (SHUFFLESEARCH_FAULT)."""
    src = rec if rec is not None else TrialRecord(**fields)
    attrs = src.to_user_attrs(None if rec is not None else fields)
    st = _st(study)
    for i, (k, v) in enumerate(attrs.items()):
        if rec is not None and i == len(attrs) // 2:
            fault_point("storage")
        st.set_trial_user_attr(tid, k, v)


def store_constraints(study: optuna.Study, tid: int, items: dict[str, float]) -> None:
    """The constraint values Optuna's samplers read, in the form this Optuna version reads."""
    st = _st(study)
    if PER_TRIAL_CONSTRAINTS:
        for k, v in items.items():
            st.set_trial_system_attr(tid, f"constraints:{k}", float(v))
    else:
        st.set_trial_system_attr(tid, "constraints", [float(v) for v in items.values()])


def end_trial(study: optuna.Study, tid: int, state: TrialState, values: list[float] | None = None,
              *, reason: str | None = None, final: bool = False) -> None:
    """Finish a trial outside ``study.tell`` (a baseline, an orphan): its reason, whether it
    ended by its own evaluation (``is_final``), then its state."""
    st = _st(study)
    if reason is not None:
        write_fields(study, tid, fail_reason=reason)
    if final:
        st.set_trial_system_attr(tid, _FINAL, True)
    st.set_trial_state_values(tid, state, values)


def create_trial(study: optuna.Study, params: dict[str, Any], distributions: dict[str, Any],
                 **fields: Any) -> tuple[int, int]:
    """A RUNNING trial made outside ask() (a baseline) holding the record fields ``fields``:
    (storage id, number)."""
    tid = _st(study).create_new_trial(study._study_id, template_trial=optuna.trial.create_trial(
        state=TrialState.RUNNING, params=params, distributions=distributions,
        user_attrs=TrialRecord(**fields).to_user_attrs(fields)))
    return tid, _db(study).get_trial(tid).number


def mark_started(study: optuna.Study, tid: int) -> None:
    """Says that a live worker got this trial out of ask() (see worker.Sweeper). Keyed by the
    trial's own id, because a retry copies system attributes from the trial it replaces."""
    _st(study).set_trial_system_attr(
        tid, _WORKER, {"trial_id": tid, "pid": os.getpid(), "host": socket.gethostname()})


@contextlib.contextmanager
def heartbeat(study: optuna.Study, tid: int) -> Iterator[None]:
    """Optuna's heartbeat for trial ``tid`` every HEARTBEAT_S while the block runs."""
    st = _st(study)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                st.record_heartbeat(tid)

    with contextlib.suppress(Exception):
        st.record_heartbeat(tid)
    th = threading.Thread(target=beat, daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join()


# --- study attributes ---------------------------------------------------------------------------


def study_attr(study: optuna.Study, name: str, default: Any = None) -> Any:
    """A study user attribute (STUDY_ATTRS names them), ``default`` when unset or empty."""
    if name not in STUDY_ATTRS:
        raise KeyError(f"{name!r} is not a study attribute ({', '.join(STUDY_ATTRS)})")
    return study.user_attrs.get(name) or default


def set_study_attr(study: optuna.Study, name: str, value: Any) -> None:
    if name not in STUDY_ATTRS:
        raise KeyError(f"{name!r} is not a study attribute ({', '.join(STUDY_ATTRS)})")
    study.set_user_attr(name, value)


# --- claims: one row per (study, key), taken atomically ---------------------------------------
# The RDB's primary key makes "insert if absent" atomic on SQLite and PostgreSQL alike, so a
# claim holds whatever the interleaving of workers and machines. Every claim is owned by a trial
# (its storage id); when that trial ends FAIL or PRUNED (its worker died and it went stale,
# or it raised) the claim is dead and the next claimant takes it over with a compare-and-set.

_TABLES = sa.MetaData()
_CLAIMS = sa.Table(
    "shufflesearch_claims", _TABLES,
    sa.Column("study_id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("owner", sa.Integer, nullable=False),  # trial_id of the claiming trial
)


def claims(study: optuna.Study, prefix: str) -> dict[str, int]:
    """key -> owner trial id for every claim of the study whose key starts with ``prefix``."""
    c = _CLAIMS.c
    with _db(study).engine.connect() as con:
        rows = con.execute(sa.select(c.key, c.owner).where(
            c.study_id == study._study_id, c.key.startswith(prefix, autoescape=True))).all()
    return {k: o for k, o in rows}


def claim(study: optuna.Study, key: str, tid: int, dead: Callable[[int], bool]) -> int:
    """Claim ``key`` for trial ``tid``; returns the owner afterwards (``tid`` when this trial
    holds it). A claim whose owner ``dead(owner)`` says is dead is taken over."""
    c = _CLAIMS.c
    eng, sid = _db(study).engine, study._study_id
    for _ in range(10):
        try:
            with eng.begin() as con:
                con.execute(_CLAIMS.insert().values(study_id=sid, key=key, owner=tid))
            return tid
        except sa.exc.IntegrityError:
            pass
        with eng.connect() as con:
            owner = con.execute(sa.select(c.owner).where(c.study_id == sid, c.key == key)).scalar()
        if owner is None:
            continue  # released between the two statements: insert again
        if owner == tid or not dead(owner):
            return owner
        with eng.begin() as con:  # compare-and-set: only if nobody took it over meanwhile
            n = con.execute(_CLAIMS.update().where(c.study_id == sid, c.key == key,
                                                   c.owner == owner).values(owner=tid)).rowcount
        if n == 1:
            log.info("claim %s: taken over from dead trial id %d", key, owner)
            return tid
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


def step_state(study: optuna.Study, key: str) -> dict[str, Any] | None:
    """{"owner", "beat", "done"} of a step's claim, or None when nobody has claimed it."""
    c = _STEPS.c
    with _db(study).engine.connect() as con:
        row = con.execute(sa.select(c.owner, c.beat, c.done).where(
            c.study_id == study._study_id, c.key == key)).first()
    return None if row is None else {"owner": row[0], "beat": row[1], "done": bool(row[2])}


def run_step(study: optuna.Study, key: str, fn: Callable[[], Any], *, name: str | None = None,
             say: Callable[[str], None] | None = None, poll_s: float = 0.5) -> tuple[bool, Any]:
    """Run ``fn`` as step ``key`` of the study unless another process did or is doing it:
    returns (True, fn()) when this process ran it, (False, None) when it was done elsewhere
    (waited for when it was running). ``name`` is the fault point reached on claiming the step
    and at every heartbeat while it runs."""
    name = name or key
    c = _STEPS.c
    eng, sid = _db(study).engine, study._study_id
    me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    seen: tuple[str, int] | None = None
    since = time.monotonic()
    told = False
    while True:
        mine = False
        row = step_state(study, key)
        if row is None:
            try:
                with eng.begin() as con:
                    con.execute(_STEPS.insert().values(study_id=sid, key=key, owner=me, beat=0, done=False))
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
                        c.study_id == sid, c.key == key, c.owner == row["owner"], c.beat == row["beat"],
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
        th = threading.Thread(target=_beat, args=(eng, sid, key, me, stop, name), daemon=True)
        th.start()
        try:
            out = fn()
        except BaseException:
            with eng.begin() as con:  # failed here (not killed): free it for the next process now
                con.execute(_STEPS.delete().where(c.study_id == sid, c.key == key, c.owner == me))
            raise
        finally:
            stop.set()
            th.join()
        with eng.begin() as con:
            con.execute(_STEPS.update().where(c.study_id == sid, c.key == key).values(done=True))
        return True, out
