"""The search: an Optuna multi-objective study over a SearchSpace, stored in runs/NAME/.

Every trial samples an Arch (define-by-run), computes its costs and guideline report on the
target, measures its latency (one model at a time across processes), scores it with the
accuracy proxies, and stores all of it on the trial so that pareto/report/export never
recompute. Optuna's storage is the run's database: SQLite in runs/NAME/study.db by default,
any RDB URL (PostgreSQL) for many machines. Resuming is re-running the same command.

Budget semantics: ``budget`` counts COMPLETE search trials; baselines (the presets that fit the
space) are evaluated first and do not count. Failed/pruned trials (impossible architectures,
build errors, NaN proxies, out-of-memory, interruptions) never count. Crashed workers' trials
go stale through Optuna's heartbeat, are failed and retried.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from ..model.arch import Arch, ArchError
from ..errors import UserError
from .space import SearchSpace, load_space

# The heartbeat API is marked experimental, and using it outside Study.optimize warns; both
# are deliberate here (ask/tell is how we keep the budget exact across workers).
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
optuna.logging.set_verbosity(optuna.logging.WARNING)

log = logging.getLogger("shufflesearch.search")

HEARTBEAT_S = 2.0  # a worker records a heartbeat this often while a trial runs
GRACE_S = 8.0  # a RUNNING trial without heartbeat for this long belongs to a dead worker
MAX_CONSECUTIVE_FAILURES = 50
ORPHAN_S = 60.0  # a RUNNING trial this old that never got a heartbeat was orphaned in ask()
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
FAULT_ENV = "SHUFFLESEARCH_FAULT"  # fault injection for the reliability tests, see fault_point
_fault_hits: dict[str, int] = {}


def fault_point(name: str, hold: Any = None) -> None:
    """``SHUFFLESEARCH_FAULT=NAME:N[,NAME:N...]`` kills this process with SIGKILL (as kill -9 or
    the OOM killer would) the Nth time it reaches point NAME: ``sample``, ``latency`` (holding
    the timing lock, as a measurement does), ``proxies`` (holding the compute lock),
    ``storage`` (half of a trial's results written). A no-op unless the variable is set."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    _fault_hits[name] = n = _fault_hits.get(name, 0) + 1
    if f"{name}:{n}" not in spec.replace(" ", "").split(","):
        return
    log.warning("fault injection: SIGKILL at %s #%d", name, n)
    with hold() if hold is not None else contextlib.nullcontext():
        os.kill(os.getpid(), signal.SIGKILL)


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
    import importlib.util

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
    from sqlalchemy.exc import IntegrityError

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=int(HEARTBEAT_S),
                grace_period=int(GRACE_S),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                **kwargs,
            )
        except IntegrityError:
            # Workers started together on an empty database race to create Optuna's tables;
            # the loser finds them made on the next try.
            if attempt == 4:
                raise UserError(f"cannot open storage {url}: its tables could not be created") from None
            time.sleep(0.5 * (attempt + 1))
        except Exception as e:  # bad URL, server down, missing driver
            raise UserError(f"cannot open storage {url}: {str(e).splitlines()[0]}") from None
    raise AssertionError("unreachable")


def _sqlite_wal(path: Path) -> None:
    """WAL lets readers (progress, dashboard) run beside the writers; it persists in the file."""
    import sqlite3

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
            old = yaml.safe_load(cfg.read_text()) or {}
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
        doc = yaml.safe_load(cfg.read_text())
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
    from .space import parse_space
    from ..common.yamlio import Located

    raw = dict(doc.get("config") or {})
    raw["objectives"] = [n for n, _ in raw.get("objectives", [])] or ["proxy", "latency"]
    return parse_space(Located(raw, {}, str(root / "config.yaml")))


# --- evaluation -------------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def prefilter_table(space: SearchSpace) -> Any:
    """The latency table the pre-filter uses (None when it is off or has no latency_ms
    constraint to filter against); a UserError when it is on but this machine has no table."""
    t = space.target
    if not (t["prefilter"] and "latency_ms" in space.constraints):
        return None
    from ..measure.latency import TargetSpec
    from ..measure.predictor import LatencyTable, table_path

    path = table_path(TargetSpec(resolution=t["resolution"], batch=t["batch"], threads=t["threads"],
                                 channels_last=t["channels_last"], backend=t["backend"]))
    if not path.exists():
        raise UserError(f"target.prefilter needs a latency table for this target on this machine: "
                        f"run `shufflesearch latency build-table --resolution {t['resolution']} "
                        f"--batch {t['batch']} --threads {t['threads']}` first")
    return LatencyTable.load(path)


class Evaluator:
    """Scores one Arch on everything the space asks for; loaded once per worker."""

    def __init__(self, space: SearchSpace) -> None:
        from ..accuracy.data import DataSpec, load_data
        from ..guidelines.checks import GuidelineSettings, load_calibration
        from ..measure.latency import DriftMonitor, LatencyCache, TargetSpec

        self.space = space
        t = space.target
        self.spec = TargetSpec(resolution=t["resolution"], batch=t["batch"], threads=t["threads"],
                               channels_last=t["channels_last"], backend=t["backend"])
        self.cache = LatencyCache()
        # Re-times a reference network every 25 fresh measurements; figures taken while this
        # machine ran >10% off its own starting speed are re-timed once, then flagged.
        self.drift = DriftMonitor(self.spec, every=25, max_seconds=t["max_seconds"])
        self.table = prefilter_table(space)
        p = space.proxy
        self.data = load_data(DataSpec(name=p["dataset"], resolution=p["resolution"],
                                       batch=p["batch"], seed=space.seed))
        self.settings = GuidelineSettings.from_dict(space.guidelines["settings"])
        self.calibration = load_calibration()

    def __call__(self, arch: Arch, timings: dict[str, float]) -> dict[str, Any]:
        from ..model.compile import build
        from ..model.cost import costs
        from ..guidelines.checks import check
        from ..measure.latency import compute_lock, timing_lock
        from ..accuracy.proxies import compute_proxies, proxy_score

        res = self.space.target["resolution"]
        t0 = time.perf_counter()
        c = costs(arch, res)
        rep = check(arch, res, self.settings, self.calibration)
        build(arch)  # fail fast (and cheaply) on anything torch refuses
        t1 = time.perf_counter()
        if self.table is not None:
            # The cheap pre-filter: a clear miss of the latency constraint is not measured.
            # Front figures stay measured: anything that passes is timed as usual.
            limit = self.space.constraints["latency_ms"]
            pred = self.table.predict(arch)
            if pred > limit * (1 + self.space.target["prefilter"]):
                raise optuna.TrialPruned(f"predicted {pred:.2f} ms, over the latency_ms limit "
                                         f"{limit:g} by more than {100 * self.space.target['prefilter']:.0f}%; not measured")
        fault_point("latency", hold=timing_lock)
        lat = self.drift.measure_arch(arch, cache=self.cache)
        t2 = time.perf_counter()
        with compute_lock(), _torch_threads(1):
            # One thread: proxies run on tiny proxy-task inputs where a second thread buys
            # little, and on a busy machine extra threads oversubscribe the cores.
            fault_point("proxies")
            scores = compute_proxies(arch, self.data, names=self.space.proxy["proxies"], seed=self.space.seed)
        score = proxy_score(scores, self.space.proxy["score"])
        t3 = time.perf_counter()
        timings.update(build=t1 - t0, latency=t2 - t1, proxies=t3 - t2)
        # Any non-finite proxy means the network broke down numerically (exploding or dead
        # activations): fail the trial with the names, even if the score does not use them.
        bad = {k: v for k, v in scores.items() if not math.isfinite(v)}
        if bad or not math.isfinite(score):
            raise FloatingPointError(f"proxy score is not finite ({bad or score})")
        g = self.space.guidelines
        penalty = rep.total
        proxy_value = score - g["weight"] * penalty if g["mode"] == "penalize" else score
        return {
            "archid": arch.archid,
            "arch": arch.to_dict(),
            "params": c.params,
            "macs": c.macs,
            "mac": c.mac,
            "peak_activation": c.peak_activation,
            "latency": lat.to_dict(),
            "latency_ms": lat.median_ms,
            "proxies": scores,
            "proxy_raw": score,
            "proxy": proxy_value,
            "guidelines": {"penalties": rep.penalties, "total": rep.total,
                           "n_findings": len(rep.findings),
                           "overhead_ms": rep.overhead_ms},
        }


def objective_values(space: SearchSpace, rec: dict[str, Any]) -> list[float]:
    pick = {"proxy": rec["proxy"], "latency": rec["latency_ms"], "mac": rec["mac"],
            "macs": rec["macs"], "params": rec["params"]}
    return [float(pick[n]) for n, _ in space.objectives]


def constraint_items(space: SearchSpace, rec: dict[str, Any]) -> dict[str, float]:
    """Optuna convention: a trial is feasible when every value is <= 0."""
    have = {"latency_ms": rec["latency_ms"], "params_m": rec["params"] / 1e6,
            "macs_m": rec["macs"] / 1e6, "mac_m": rec["mac"] / 1e6,
            "guideline_penalty": rec["guidelines"]["total"]}
    out = {k: have[k] - v for k, v in sorted(space.constraints.items())}
    if space.guidelines["mode"] == "constrain":
        out["guidelines"] = rec["guidelines"]["total"] - space.guidelines["max_penalty"]
    return out


# Optuna 5 takes constraints per trial (Trial.set_constraint, read by every sampler) and
# deprecates the samplers' constraints_func; Optuna 4 has only the latter.
_PER_TRIAL_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")


def _constraint_system_attrs(items: dict[str, float]) -> dict[str, Any]:
    """How a constraint set is stored on a trial made with create_trial (the baselines)."""
    if _PER_TRIAL_CONSTRAINTS:
        return {f"constraints:{k}": float(v) for k, v in items.items()}
    return {"constraints": list(items.values())}


def make_sampler(space: SearchSpace, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The space's sampler; each worker gets its own seed so that workers do not propose the
    same architectures in lockstep."""
    s = space.sampler
    constrained = space.constraints or space.guidelines["mode"] == "constrain"
    cf = _constraints_func if constrained and not _PER_TRIAL_CONSTRAINTS else None
    seed = space.seed + 7919 * worker
    if s["name"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s["name"] == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=s["population_size"], seed=seed, constraints_func=cf)
    if s["name"] == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s["n_startup_trials"], constraints_func=cf)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s["n_startup_trials"],
                                      constraints_func=cf, multivariate=True, group=True)


def _constraints_func(trial: optuna.trial.FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("constraints", []))


# --- the worker loop ---------------------------------------------------------------------------


def _search_state(study: optuna.Study) -> tuple[int, list[int]]:
    """(completed search trials, numbers of running search trials) — baselines excluded."""
    done, running = 0, []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.user_attrs.get("baseline"):
            continue
        if t.state == TrialState.COMPLETE:
            done += 1
        else:
            running.append(t.number)
    return done, sorted(running)


def _over_budget(study: optuna.Study, number: int, budget: int) -> bool:
    """Exact budget with concurrent workers: when more search trials run than the budget
    leaves room for, the highest-numbered ones step back."""
    done, running = _search_state(study)
    return number in running[max(budget - done, 0):]


@contextlib.contextmanager
def _heartbeat(storage: optuna.storages.BaseStorage, trial_id: int):
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)

    with contextlib.suppress(Exception):
        storage.record_heartbeat(trial_id)
    th = threading.Thread(target=beat, daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join()


def _find_duplicate(study: optuna.Study, archid: str, number: int) -> optuna.trial.FrozenTrial | None:
    """A completed trial of the same architecture; if an earlier trial of it is still running
    (another worker), wait for it rather than measure the same network twice."""
    while True:
        running = False
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if t.user_attrs.get("archid") != archid or t.number == number:
                continue
            if t.state == TrialState.COMPLETE:
                return t
            running = running or t.number < number
        if not running:
            return None
        time.sleep(0.5)
        optuna.storages.fail_stale_trials(study)


def run_trial(study: optuna.Study, space: SearchSpace, evaluate: Evaluator,
              budget: int | None = None) -> optuna.trial.FrozenTrial | None:
    """Ask one trial, evaluate it, tell the result. Exceptions become FAIL with a reason."""
    t_ask = time.perf_counter()
    trial = study.ask()
    timings: dict[str, float] = {}
    with _heartbeat(study._storage, trial._trial_id):
        try:
            arch = space.sample(trial)
        except ArchError as e:
            trial.set_user_attr("fail_reason", f"rejected: {e}")
            study.tell(trial, state=TrialState.PRUNED)
            return None
        timings["sample"] = time.perf_counter() - t_ask
        trial.set_user_attr("archid", arch.archid)
        fault_point("sample")
        if budget is not None and _over_budget(study, trial.number, budget):
            trial.set_user_attr("fail_reason", "over budget: another worker took the last slot")
            study.tell(trial, state=TrialState.FAIL)
            return None
        dup = _find_duplicate(study, arch.archid, trial.number)
        try:
            if dup is not None:
                rec = {k: v for k, v in dup.user_attrs.items() if k not in ("timings", "baseline", "duplicate_of")}
                rec["duplicate_of"] = dup.number
            else:
                rec = evaluate(arch, timings)
        except optuna.TrialPruned as e:
            trial.set_user_attr("fail_reason", f"pruned: {e}")
            study.tell(trial, state=TrialState.PRUNED)
            return None
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted by the user")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except MemoryError:
            trial.set_user_attr("fail_reason", "out of memory")
            study.tell(trial, state=TrialState.FAIL)
            return None
        except Exception as e:
            reason = f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if "out of memory" in str(e).lower() or "can't allocate" in str(e).lower():
                reason = f"out of memory: {reason}"
            log.warning("trial %d failed: %s", trial.number, reason)
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=TrialState.FAIL)
            return None
        t_store = time.perf_counter()
        items = constraint_items(space, rec)
        rec["constraints"] = list(items.values())
        if _PER_TRIAL_CONSTRAINTS:
            for k, v in items.items():
                trial.set_constraint(k, v)
        for i, (k, v) in enumerate(rec.items()):
            if i == len(rec) // 2:
                fault_point("storage")
            trial.set_user_attr(k, v)
        values = objective_values(space, rec)
        timings["storage"] = time.perf_counter() - t_store
        trial.set_user_attr("timings", timings)
        trial.set_user_attr("worker_pid", os.getpid())
        frozen = study.tell(trial, values)
        timings["storage"] = time.perf_counter() - t_store
    return frozen


def evaluate_baselines(run: Run, evaluate: Evaluator | None = None) -> None:
    """Evaluate the presets that fit the space, once, before any search trial; they are stored
    as completed trials marked ``baseline`` and do not count towards the budget."""
    study = run.load_study()
    have = {t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    todo = [(n, a) for n, a in run.space.baseline_archs().items() if n not in have]
    if not todo:
        return
    evaluate = evaluate or Evaluator(run.space)
    for name, arch in todo:
        log.info("baseline %s (%s)", name, arch.archid)
        timings: dict[str, float] = {}
        rec = evaluate(arch, timings)
        items = constraint_items(run.space, rec)
        rec["constraints"] = list(items.values())
        rec.update(baseline=name, timings=timings)
        # Stored with the params the space would sample it from, so the sampler learns from it.
        params, dists = run.space.encode(arch) if run.space.contains(arch) else ({}, {})
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists,
            values=objective_values(run.space, rec), user_attrs=rec,
            system_attrs=_constraint_system_attrs(items),
        ))


def short_train_front(run: Run, quiet: bool = True) -> dict[str, Any]:
    """Multi-fidelity: short-train the baselines and ``short_train_top_k`` front points spread
    evenly by latency, seeded, on the proxy task. Results go to the study's user attr
    ``short_train`` (keyed by trial number) one at a time, so an interrupted pass resumes."""
    from ..accuracy.data import DataSpec, load_data
    from ..measure.latency import compute_lock
    from ..accuracy.proxies import short_train
    from ..review.pareto import completed, pareto_front, trial_records

    k, steps = run.space.proxy["short_train_top_k"], run.space.proxy["short_train_steps"]
    study = run.load_study()
    done = dict(study.user_attrs.get("short_train") or {})
    if k <= 0:
        return done
    recs = completed(trial_records(study.get_trials(deepcopy=False)))
    front = [r for r in pareto_front(recs) if not r.get("baseline")]
    picks = [r for r in recs if r.get("baseline")]
    if front:
        idx = sorted({round(i * (len(front) - 1) / max(k - 1, 1)) for i in range(min(k, len(front)))})
        picks += [front[i] for i in idx]
    p = run.space.proxy
    data = None
    for r in picks:
        if str(r["trial"]) in done:
            continue
        data = data or load_data(DataSpec(name=p["dataset"], resolution=p["resolution"],
                                          batch=p["batch"], seed=run.space.seed))
        if not quiet:
            print(f"short-training trial {r['trial']} ({steps} steps)", file=sys.stderr, flush=True)
        with compute_lock(), _torch_threads(1):
            res = short_train(Arch.from_dict(r["arch"]), data, steps=steps, seed=run.space.seed)
        done[str(r["trial"])] = {k2: float(v) for k2, v in res.items()}
        study.set_user_attr("short_train", done)
        log.info("short-trained trial %d: val_acc %.4f", r["trial"], res["val_acc"])
    return done


def fail_orphans(study: optuna.Study) -> None:
    """A worker killed inside ``study.ask()`` (the sampler runs there) leaves a RUNNING trial
    with no heartbeat, which Optuna never sees as stale; it would hold a budget slot forever.
    Every live trial gets its heartbeat and archid seconds after ask, so an old one without an
    archid is dead."""
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "archid" in t.user_attrs or t.datetime_start is None:
            continue
        if now - t.datetime_start.timestamp() > ORPHAN_S:
            with contextlib.suppress(Exception):  # another worker may be failing it too
                study._storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                                   "worker died while the trial was being created")
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def work(run: Run, budget: int, stop_event: Any = None, worker: int = 0) -> int:
    """One worker: run trials until the study holds ``budget`` completed search trials."""
    study = optuna.load_study(study_name=run.name, storage=run.storage(),
                              sampler=make_sampler(run.space, worker))
    evaluate = Evaluator(run.space)
    failures = 0
    while stop_event is None or not stop_event.is_set():
        optuna.storages.fail_stale_trials(study)
        fail_orphans(study)
        done, running = _search_state(study)
        if done >= budget:
            return 0
        if done + len(running) >= budget:
            time.sleep(0.5)  # the last slots are taken: wait for them to finish or go stale
            continue
        t = run_trial(study, run.space, evaluate, budget=budget)
        if t is None:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise UserError(
                    f"{failures} trials in a row failed or were rejected; see `shufflesearch pareto "
                    f"{run.root} --failed` and the log {run.root / 'run.log'}"
                )
        else:
            failures = 0
    return 0


def check_buildable(space: SearchSpace, path: str | Path, tries: int = 50) -> None:
    """A space in which nothing can be built (groups that divide no width, an odd width to
    split) is bad input, refused before the run folder exists, not 50 failed trials."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=space.seed))
    first: ArchError | None = None
    for _ in range(tries):
        trial = study.ask()
        try:
            space.sample(trial)
            return
        except ArchError as e:
            first = first or e
            study.tell(trial, state=TrialState.FAIL)
    raise UserError(f"{path}: no architecture of this space can be built ({tries} random tries); {first}")


def _worker_main(space_path: str, name: str, runs_root: str, storage: str | None, budget: int,
                 worker: int) -> int:
    space = load_space(space_path)
    run = open_run(space, name, runs_root, storage)
    _setup_log(run)
    return work(run, budget, worker=worker)


def _setup_log(run: Run) -> None:
    """Log to this run's run.log: a process that runs several searches (the Python API, the
    tests) must not keep writing into the first run's file."""
    path = (run.root / "run.log").resolve()
    root = logging.getLogger("shufflesearch")
    for x in list(root.handlers):
        if isinstance(x, logging.FileHandler):
            if Path(x.baseFilename) == path:
                return
            root.removeHandler(x)
            x.close()
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter(f"%(asctime)s pid{os.getpid()} %(levelname)s %(message)s"))
    root.addHandler(h)
    root.setLevel(logging.INFO)


def search(space_path: str | Path, budget: int, name: str | None = None, runs_root: str | Path = "runs",
           storage: str | None = None, workers: int = 1, quiet: bool = False) -> Run:
    """`shufflesearch run`: resume or start the run, and work until the budget is reached."""
    if budget < 0:
        raise UserError(f"--budget must be >= 0, got {budget}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    space = load_space(space_path)
    check_buildable(space, space_path)
    prefilter_table(space)  # a missing table is refused before any folder is made
    run = open_run(space, name, runs_root, storage)
    _setup_log(run)
    log.info("run %s: budget %d, workers %d, storage %s", run.name, budget, workers, run.storage_url)
    from .progress import Progress

    with Progress(run, budget, quiet=quiet) as progress:
        evaluate_baselines(run)  # once, before any worker starts
        if workers == 1:
            th = threading.Thread(target=progress.poll_forever, daemon=True)
            th.start()
            work(run, budget)
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker_main,
                                 args=(str(space_path), run.name, str(runs_root), storage, budget, i))
                     for i in range(workers)]
            for p in procs:
                p.start()
            try:
                while any(p.is_alive() for p in procs):
                    progress.poll()
                    time.sleep(1.0)
            except KeyboardInterrupt:
                for p in procs:
                    p.terminate()
                raise
            bad = [p.exitcode for p in procs if p.exitcode]
            if bad:
                raise UserError(f"{len(bad)} worker(s) exited with an error; see {run.root / 'run.log'}")
        progress.poll()
    short_train_front(run, quiet=quiet)
    log.info("run %s finished", run.name)
    return run
