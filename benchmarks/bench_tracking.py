"""Many jobs against one tracking store at once: N processes start together, each opens a run,
logs a parameter and M metric values (each call timed), an artifact, and registers a model
version from it; then every run, metric value and version is counted back. The store is an
`mlflow server` URI (workflows/mlflow_server.sh: PostgreSQL behind it) or a sqlite file
(`sqlite:///...`, which every process opens itself: what parallel jobs pointed at one file do).

    python benchmarks/bench_tracking.py URI [--processes 8] [--metrics 50] [--name NAME]

Prints JSON: runs, metric values and versions expected and found (lost = expected - found),
the workers that failed and why, and the p50/p95 latency of one `log_metric` call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info  # noqa: E402


def worker(uri: str, experiment: str, name: str, index: int, metrics: int, go: str, out: str) -> None:
    """One job: say it is ready (`out`.ready), wait for the common start (the file `go`), then
    run, log, register; its timings to `out`. The store is opened as simgan's own jobs open it
    (a new sqlite store created by one of them)."""
    import mlflow

    from simgan.tracking import ensure_store, mlflow_env

    mlflow_env()
    ensure_store(uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.set_experiment(experiment)
    Path(out + ".ready").touch()
    while not Path(go).exists():
        time.sleep(0.005)
    lat = []
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=f"job-{index}") as run:
        mlflow.log_param("index", index)
        for step in range(metrics):
            t0 = time.perf_counter()
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
            lat.append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            art = Path(tmp) / "model.json"
            art.write_text(json.dumps({"job": index}))
            mlflow.log_artifact(str(art))
    client = mlflow.MlflowClient()
    try:  # every job may be the first to register the name
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model.json", run.info.run_id)
    Path(out).write_text(json.dumps({"run_id": run.info.run_id, "version": version.version, "latencies_s": lat}))


def count_back(uri: str, experiment: str, name: str) -> dict:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=10000) if exp else []
    complete = sum(len(client.get_metric_history(r.info.run_id, "loss")) for r in runs)
    try:
        versions = client.search_model_versions(f"name = '{name}'", max_results=10000)
    except mlflow.exceptions.MlflowException:
        versions = []
    return {"runs_found": len(runs), "metric_values_found": complete, "versions_found": len(versions)}


def main(uri: str, processes: int = 8, metrics: int = 50, name: str | None = None) -> dict:
    tag = uuid.uuid4().hex[:8]
    experiment, name = f"load-{tag}", name or f"load-model-{tag}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        procs = []
        for i in range(processes):
            out = Path(tmp) / f"job{i}.json"
            code = (f"from benchmarks.bench_tracking import worker; "
                    f"worker({uri!r}, {experiment!r}, {name!r}, {i}, {metrics}, {str(go)!r}, {str(out)!r})")
            procs.append((out, subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE, text=True)))
        deadline = time.time() + 300  # every job has imported mlflow and opened the store (or died)
        while time.time() < deadline and not all(Path(f"{o}.ready").exists() or p.poll() is not None
                                                  for o, p in procs):
            time.sleep(0.05)
        go.touch()
        failed, lat = {}, []
        for i, (out, p) in enumerate(procs):
            _, err = p.communicate(timeout=600)
            if p.returncode != 0 or not out.is_file():
                failed[i] = (err.strip().splitlines() or [f"exit code {p.returncode}"])[-1][:300]
                continue
            lat += json.loads(out.read_text())["latencies_s"]
    found = count_back(uri, experiment, name)
    lat.sort()
    pick = (lambda q: 1e3 * lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: float("nan"))
    return {"machine": machine_info(), "store": uri.split(":", 1)[0], "processes": processes,
            "metrics_per_run": metrics, "runs_expected": processes, "metric_values_expected": processes * metrics,
            "versions_expected": processes, **found,
            "lost_runs": processes - found["runs_found"],
            "lost_metric_values": processes * metrics - found["metric_values_found"],
            "lost_versions": processes - found["versions_found"], "failed_workers": failed,
            "log_metric_p50_ms": pick(0.5), "log_metric_p95_ms": pick(0.95)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("uri")
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--metrics", type=int, default=50)
    ap.add_argument("--name")
    a = ap.parse_args()
    print(json.dumps(main(a.uri, a.processes, a.metrics, a.name), indent=2))
