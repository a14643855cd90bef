"""The run folder runs/NAME: its config, where its Optuna storage lives (SQLite inside it, or an
RDB URL; opened by storage.py), and its log. A folder belongs to exactly one search space."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

from ..common.files import atomic_write
from ..common.yamlio import Located, parse_yaml
from ..errors import UserError, first_line
from .space import SearchSpace, parse_space
from .storage import make_storage, set_study_attr, study_attr

log = logging.getLogger("shufflesearch.search")

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
        raise UserError("use letters, digits, '.', '_' and '-' only (a run stays inside runs/)",
                        field="name", value=name)
    return name


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
            raise UserError(f"{cfg}: unreadable run config ({e.__class__.__name__}); give the run "
                            "another name", field="name", value=name, where="") from None
        if not isinstance(old, dict) or old.get("fingerprint") != fp:
            raise UserError(f"{root} holds a run of a different search space (or a changed one); "
                            f"give the run another name, or delete {root} to start over",
                            field="name", value=name, where="")
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
        atomic_write(cfg, yaml.safe_dump(doc, sort_keys=False))  # a crash never leaves half a config
    run = Run(root, name, url, space)
    st = run.storage()
    study = optuna.create_study(
        study_name=name, storage=st, load_if_exists=True,
        directions=[d for _, d in space.objectives],
    )
    if not study_attr(study, "space_fingerprint"):
        set_study_attr(study, "space_fingerprint", fp)
        set_study_attr(study, "objectives", [n for n, _ in space.objectives])
    elif study_attr(study, "space_fingerprint") != fp:
        raise UserError(f"storage {url} holds study '{name}' of a different search space; give the "
                        "run another name", field="name", value=name, where="")
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
        raise UserError(f"{root}: cannot open the study ({first_line(e)})") from None
    return run, study


def _space_from_config(doc: dict, root: Path) -> SearchSpace:
    raw = dict(doc.get("config") or {})
    raw["objectives"] = [n for n, _ in raw.get("objectives", [])] or ["proxy", "latency"]
    return parse_space(Located(raw, {}, str(root / "config.yaml")))


def setup_log(run: Run, worker: int | None = None) -> None:
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
