"""The MLflow tracking store: which one (config, $MLFLOW_TRACKING_URI, a local sqlite file),
bounded retries, and a writable sqlite store checked before use."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import sqlite3
from pathlib import Path

from simgan.errors import SimganError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_store_writable(uri: str) -> None:
    """A local sqlite store must be writable (the file and, for its journal, its folder); sqlite
    would otherwise retry its locks for minutes before failing."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):])
    folder = db.parent if str(db.parent) else Path(".")
    if db.exists() and not os.access(db, os.W_OK):
        raise SimganError(f"MLflow store {db} ({uri}) is read-only; give a writable register.tracking_uri "
                          "(or --tracking-uri)")
    if folder.is_dir() and not os.access(folder, os.W_OK):
        raise SimganError(f"MLflow store {db} ({uri}): its folder {folder} is read-only (sqlite writes a journal "
                          "beside the file); give a writable register.tracking_uri (or --tracking-uri)")


def mlflow_env() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # bounded: an unreachable registry fails in seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def ensure_store(uri: str) -> None:
    """A new local sqlite store is created whole or not at all: MLflow's schema migrations run
    on a temporary file beside it, which is renamed into place when they are done, one
    process at a time (a lock file beside it). A first use killed half-way, or two first
    uses at once, then leave no half-migrated store behind. An existing store that a killed
    first use of an older version left without its schema version is named."""
    check_store_writable(uri)
    db = sqlite_path(uri)
    if db is None:
        return
    if db.exists() and db.stat().st_size > 0:
        _check_schema_version(db, uri)
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.parent, os.O_RDONLY)  # the folder is the lock: nothing is left beside the store
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another first user: wait for it, then use its store
        if db.exists() and db.stat().st_size > 0:
            return
        for old in db.parent.glob(f".{db.name}.init-*"):  # of first uses killed half-way (the lock is ours)
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        tmp = db.with_name(f".{db.name}.init-{os.getpid()}")
        mlflow_env()
        from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        try:  # the artifact root MLflow itself gives a new sqlite store's default experiment
            SqlAlchemyStore(f"sqlite:///{tmp}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH).engine.dispose()
            os.replace(tmp, db)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    finally:
        os.close(fd)


def _check_schema_version(db: Path, uri: str) -> None:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            version = list(con.execute("SELECT version_num FROM alembic_version")) if "alembic_version" in tables else []
            runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise SimganError(f"MLflow store {db} ({uri}): not a readable sqlite database ({exc}); give another "
                          "register.tracking_uri (or --tracking-uri), or move this file away") from None
    if tables and not version:
        raise SimganError(f"MLflow store {db} ({uri}) was left half-created by an interrupted first use (its tables "
                          f"have no schema version; {runs} runs in it): move it away (e.g. mv {db} {db}.broken) "
                          "and run again; the next use creates it whole")


PROCESS_TAG = "simgan.process"  # host:pid of the process that holds the run open
IF_DEAD_TAG = "simgan.status_if_dead"  # what the run is when that process died without closing it


def process_tags(status_if_dead: str = "KILLED") -> dict[str, str]:
    """Tags that let a later command close this run if this process is killed (kill -9 closes
    nothing): a training run ends KILLED; a finished training run reopened to register the
    model ends FINISHED again."""
    return {PROCESS_TAG: f"{platform.node()}:{os.getpid()}", IF_DEAD_TAG: status_if_dead}


def end_dead_runs(client, experiment_ids: list[str]) -> list[str]:
    """Close the runs of these experiments left RUNNING by a simgan process of this host that
    no longer exists; returns their ids. Runs of live processes and of other hosts stay."""
    ended = []
    for run in client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=1000):
        host, _, pid = run.data.tags.get(PROCESS_TAG, "").rpartition(":")
        if host != platform.node() or not pid.isdigit() or _alive(int(pid)):
            continue
        client.set_terminated(run.info.run_id, status=run.data.tags.get(IF_DEAD_TAG, "KILLED"))
        ended.append(run.info.run_id)
    return ended


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
