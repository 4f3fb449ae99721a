"""The local MLflow store under faults: a first use killed half-way or two at once, a store left
half-created by an older version, and runs left RUNNING by killed processes."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from simgan.errors import SimganError
from simgan.tracking import end_dead_runs, ensure_store


def _py(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})


def _version(db) -> list:
    with sqlite3.connect(db) as con:
        return list(con.execute("SELECT version_num FROM alembic_version"))


def test_a_killed_or_concurrent_first_use_leaves_a_whole_store(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    first = _py(f"from simgan.tracking import ensure_store; ensure_store({uri!r})")
    deadline = time.time() + 60
    while not list(tmp_path.glob(".mlflow.db.init-*")) and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # in the middle of MLflow's migrations
    first.wait()
    assert not db.exists() and list(tmp_path.glob(".mlflow.db.init-*"))
    # two first uses at once after it: one store, whole, and the killed one's temporary file gone
    pair = [_py(f"from simgan.tracking import ensure_store; ensure_store({uri!r}); print('ok')") for _ in range(2)]
    for p in pair:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "ok" in out, err[-2000:]
    assert len(_version(db)) == 1 and not list(tmp_path.glob(".mlflow.db.init-*"))
    ensure_store(uri)  # an existing whole store: nothing to do


def test_a_half_created_store_is_named(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as con:  # what a first use of an older version left when killed
        con.execute("CREATE TABLE experiments (id INTEGER)")
        con.execute("CREATE TABLE runs (id INTEGER)")
    with pytest.raises(SimganError, match="left half-created by an interrupted first use .* mv .*old.db"):
        ensure_store(f"sqlite:///{db}")
    (tmp_path / "junk.db").write_text("not sqlite at all")
    with pytest.raises(SimganError, match="junk.db .*not a readable sqlite database"):
        ensure_store(f"sqlite:///{tmp_path / 'junk.db'}")


def test_runs_of_killed_processes_are_closed_by_the_next_command(tmp_path):
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(uri)
    code = ("import mlflow, os; from simgan.tracking import process_tags;"
            f"mlflow.set_tracking_uri({uri!r}); e = mlflow.set_experiment('e').experiment_id;"
            "c = mlflow.MlflowClient();"
            "ids = [c.create_run(e, tags=process_tags(s)).info.run_id for s in ('KILLED', 'FINISHED')];"
            "print(*ids, flush=True); os.kill(os.getpid(), 9)")  # killed with both runs open
    p = _py(code)
    out, err = p.communicate(timeout=120)
    assert p.returncode == -9, err[-2000:]
    ids = dict(zip(("KILLED", "FINISHED"), out.split()))
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e").experiment_id
    live = client.create_run(exp)  # RUNNING, no process tags: left alone
    assert {client.get_run(i).info.status for i in ids.values()} == {"RUNNING"}
    assert sorted(end_dead_runs(client, [exp])) == sorted(ids.values())
    assert {s: client.get_run(i).info.status for s, i in ids.items()} == {"KILLED": "KILLED", "FINISHED": "FINISHED"}
    assert client.get_run(live.info.run_id).info.status == "RUNNING"
