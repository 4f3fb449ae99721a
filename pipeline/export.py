"""`simgan export (--checkpoint CKPT | --model URI) --format onnx|torchscript --out DIR`: the
model's sampler as one graph plus its JSON sidecar (simgan.export)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml

from simgan.checkpoint import build_model, load_checkpoint
from simgan.domains import domain_of_checkpoint
from simgan.errors import SimganError
from simgan.export import describe, export_model
from simgan.io import atomic_path, check_output_dir, file_sha256


def _verdict_of_metrics(path: Path, checkpoint: Path) -> dict:
    """The validation a metrics.json records, if it was made for this checkpoint's samples."""
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SimganError(f"--metrics {path}: not a readable metrics.json ({exc})") from None
    gate = m.get("gate") if isinstance(m, dict) else None
    if not isinstance(gate, dict) or not isinstance(gate.get("pass"), bool):
        raise SimganError(f"--metrics {path}: no gate verdict (expected a 'gate' object with 'pass')")
    if m.get("candidate_checkpoint_sha256") != file_sha256(checkpoint):
        raise SimganError(f"--metrics {path}: its samples came from another checkpoint than {checkpoint}")
    return {"gate": "pass" if gate["pass"] else "fail", "metrics": str(path),
            "checks": {k: {kk: v.get(kk) for kk in ("value", "max", "min", "pass") if kk in v}
                       for k, v in gate.get("checks", {}).items()}}


def _registered_checkpoint(uri: str, into: Path) -> tuple[Path, dict]:
    """A registered model's checkpoint (downloaded into `into`) and its version's verdict."""
    import mlflow

    from simgan.registry import load_surrogate  # lazy: MLflow is heavy

    load_surrogate(uri)  # a clear error when the URI does not resolve
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(into)))
    try:
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
        checkpoint = local / flavor["artifacts"]["checkpoint"]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise SimganError(f"{uri}: the registered model names no checkpoint artifact in its MLmodel") from None
    verdict = {"gate": "unknown", "model": uri}
    try:
        from mlflow.store.artifact.utils.models import get_model_name_and_version
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        mv = client.get_model_version(*get_model_name_and_version(client, uri))
        verdict.update({"gate": mv.tags.get("gate", "unknown"), "version": int(mv.version),
                        **{k: v for k, v in mv.tags.items() if k != "gate"}})
    except Exception as exc:  # the registry's answer is a record, not a requirement
        verdict["registry_error"] = str(exc)
    return checkpoint, verdict


def export_cli(args) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SimganError(f"--out {out}: exists and is not an empty folder (the export writes model.* and model.json)")
    check_output_dir(out, create=False)  # a read-only place is named before the export's minutes
    with tempfile.TemporaryDirectory() as td:
        if args.checkpoint:
            checkpoint = Path(args.checkpoint)
            verdict = (_verdict_of_metrics(Path(args.metrics), checkpoint) if args.metrics
                       else {"gate": "not validated", "note": "export with --metrics METRICS.json to record it"})
            source = str(checkpoint)
        else:
            if args.metrics:
                raise SimganError("--metrics goes with --checkpoint; a registered model carries its verdict")
            checkpoint, verdict = _registered_checkpoint(args.model, Path(td))
            source = args.model
        ckpt = load_checkpoint(checkpoint)
        domain = domain_of_checkpoint(ckpt, str(checkpoint))
        model = build_model(ckpt, domain, "cpu")
        graph = domain.export_graph(model, ckpt)
        staging = Path(td) / "export"
        staging.mkdir()
        # what a consumer needs beside the graph (the calorimeter's voxel layout), as the registered model has it
        beside = {k: Path(v).name for k, v in domain.pyfunc_artifacts(ckpt, str(checkpoint), staging).items()}
        sidecar = export_model(graph, args.format, staging, checkpoint, domain.name,
                               ckpt["model_args"]["config"]["family"], verdict, source, beside,
                               ckpt.get("condition_ranges"))
        place(staging, [sidecar["file"], *beside.values(), "model.json"], out)
    print(describe(sidecar))
    return 0


def place(staging: Path, names: list[str], out: Path) -> None:
    """The export's files into `out`, each whole (a temporary name, then a rename), the sidecar
    last; if one cannot be written (a full disk, a quota), those placed already are removed with
    the folder if this made it, and the error names the file and the cause."""
    made = not out.exists()
    placed = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            with atomic_path(out / name) as tmp:
                shutil.copyfile(staging / name, tmp)
            placed.append(out / name)
    except BaseException:
        for p in placed:
            p.unlink(missing_ok=True)
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
