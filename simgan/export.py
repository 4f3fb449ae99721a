"""Export of a trained model as one graph for consumers outside Python: C++ frameworks load
ONNX (onnxruntime) or TorchScript (libtorch), as Geant4's fast-simulation example Par04 and
ATLAS's AtlFast3 do.

The graph takes the conditions and the random numbers as inputs: the caller owns the random
generator and draws the noise each input names (normal: N(0, 1) per entry; uniform: U[0, 1)
per entry). It returns the sample in the domain's file units; where a part cannot be one
graph, the graph returns what that part starts from and the sidecar names the post-step and
its reference code. A JSON sidecar beside the graph states the contract: the inputs and
outputs (names, shapes with N the batch, units, noise), the checkpoint's SHA-256, the
validation verdict it passed, and the round trip measured at export (the exported graph
against the PyTorch module on the same inputs).

A domain gives `export_graph(model, ckpt) -> ExportGraph` (simgan.domains.base.Domain).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from simgan.errors import SimganError
from simgan.extras import require
from simgan.io import file_sha256, text_sha256, write_json_atomic

FORMATS = ("onnx", "torchscript")
# the graph's file in an export folder (the TorchScript one not model.pt: the checkpoint beside
# it in a registered model is model.pt)
GRAPH_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
OPSET = 18


@dataclass
class Port:
    """One input or output of the graph. shape: "N" stands for the batch."""

    name: str
    shape: tuple
    units: str
    meaning: str = ""
    noise: str | None = None  # inputs only: "normal" or "uniform", the caller's draws
    dtype: str = "float32"
    columns: list[str] | None = None  # a condition input of named columns: their names, in order
    # outputs: the round trip's difference relative to each value, or to the output's range for
    # quantities whose zero is arbitrary (a time on a clock)
    relative_to: str = "value"
    # outputs: zero where a comparison in the graph dropped the entry (a voxel below a readout
    # threshold): the round trip counts the entries that one side dropped and the other kept
    # (float rounding on a comparison's edge), and measures the rest on rows without such
    cut_by_comparison: bool = False


@dataclass
class ExportGraph:
    """What a domain hands to the exporter: the module (forward takes the inputs in order and
    returns the outputs in order), its ports, and example inputs (conditions inside the
    training range, noise drawn from `generator`) of n rows."""

    module: torch.nn.Module
    inputs: list[Port]
    outputs: list[Port]
    example: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]
    post_step: str | None = None  # what the consumer does with the outputs, and the reference code
    post_step_parameters: dict | None = None  # what the reference code of the post-step needs
    notes: list[str] = field(default_factory=list)


def _dims(ports: list[Port]):
    n = torch.export.Dim("N", min=1, max=1 << 24)
    return tuple({0: n} for _ in ports)


def export_graph(graph: ExportGraph, fmt: str, path: Path) -> None:
    """Write the graph in `fmt` to `path` (atomically: a temporary name, then a rename)."""
    if fmt not in FORMATS:
        raise SimganError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    module = graph.module.eval()
    example = graph.example(4, torch.Generator().manual_seed(0))
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # torch's exporter says that each input's batch axis is one axis N, which it is
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
        if fmt == "onnx":
            require("onnxscript")  # torch's ONNX exporter writes through it
            torch.onnx.export(module, example, str(tmp), input_names=[p.name for p in graph.inputs],
                              output_names=[p.name for p in graph.outputs], dynamic_shapes=_dims(graph.inputs),
                              opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
                              optimize=False)  # (onnxscript's graph rewrites take minutes on a flow's inverse)
        else:
            # the tracer's warnings (e.g. zuko's splines unpack a pair, x0, x1 = t, along an axis of 2,
            # whatever the batch) are not the check: the round trip runs another batch size than the
            # trace's and compares (and the tracer's C++ side can leave a warning turned into an error
            # pending, which surfaces later as a SystemError)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(tmp))
    tmp.replace(path)


def run_exported(path: Path, fmt: str, graph: ExportGraph, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """The exported file's outputs for these inputs (onnxruntime or torch.jit.load)."""
    if fmt == "onnx":
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return sess.run(None, {p.name: x.numpy() for p, x in zip(graph.inputs, inputs)})
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        out = loaded(*inputs)
    return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


def max_relative_difference(a: np.ndarray, b: np.ndarray, relative_to: str = "value") -> float:
    """max |a - b| / max(|b|, 1e-3 max |b|): relative per entry, entries below a thousandth of
    the output's largest measured against that; relative_to="range": max |a - b| / (max b -
    min b), for quantities whose zero is arbitrary (a time near 0 ns is the difference of terms
    of 10^4 ns, whose float32 rounding is what is left)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if relative_to == "range":
        return float(np.abs(a - b).max(initial=0.0) / max(float(np.ptp(b)) if b.size else 0.0, 1e-30))
    scale = np.maximum(np.abs(b), max(1e-3 * float(np.abs(b).max(initial=0.0)), 1e-30))
    return float((np.abs(a - b) / scale).max(initial=0.0))


def round_trip(path: Path, fmt: str, graph: ExportGraph, n: int = 256, seed: int = 1) -> dict:
    """The exported graph against the PyTorch module on n example rows (other than the export's
    own): the largest relative difference per output, and the throughput of both (rows/s)."""
    inputs = graph.example(n, torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = graph.module.eval()(*inputs)
    t_torch = time.perf_counter() - t0
    ref = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
    t0 = time.perf_counter()
    got = run_exported(path, fmt, graph, inputs)
    t_exported = time.perf_counter() - t0
    diffs, cut = {}, {}
    for p, g, r in zip(graph.outputs, got, ref):
        if p.cut_by_comparison:
            differ = (np.asarray(g) == 0) != (r == 0)
            rows = differ.reshape(len(r), -1).any(1)
            cut[p.name] = {"entries_cut_differently": int(differ.sum()), "entries": int(differ.size),
                           "rows_with_one": int(rows.sum())}
            g, r = np.asarray(g)[~rows], r[~rows]
        diffs[p.name] = max_relative_difference(g, r, p.relative_to)
    out = {"rows": n, "max_relative_difference": diffs, "max_relative_difference_all": max(diffs.values()),
           "rows_per_s_pytorch": n / t_torch, f"rows_per_s_{fmt}": n / t_exported}
    if cut:
        out["cut_by_comparison"] = cut
    return out


def export_model(graph: ExportGraph, fmt: str, out_dir: Path, checkpoint: Path, domain: str, family: str,
                 verdict: dict, source: str, beside: dict[str, str] | None = None,
                 condition_ranges: dict | None = None) -> dict:
    """The graph and its sidecar into out_dir (`model.onnx` or `model.torchscript.pt`, and
    `model.json`); returns the sidecar. The round trip is measured before anything is left in
    out_dir. `beside`: files of the domain already in out_dir that a consumer needs (what -> file
    name, e.g. the voxel layout), listed in the sidecar with every file's checksum;
    `condition_ranges`: the training ranges of the conditions (a consumer warns outside them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt not in FORMATS:
        raise SimganError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    path = out_dir / GRAPH_FILES[fmt]
    export_graph(graph, fmt, path)
    try:
        check = round_trip(path, fmt, graph)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    sidecar = {
        "format": fmt, "file": path.name, "opset": OPSET if fmt == "onnx" else None, "domain": domain,
        "family": family, "source": source, "checkpoint_sha256": file_sha256(checkpoint),
        "validation": verdict, "inputs": [asdict(p) for p in graph.inputs],
        "outputs": [asdict(p) for p in graph.outputs], "post_step": graph.post_step,
        "post_step_parameters": graph.post_step_parameters, "notes": graph.notes,
        "round_trip": check, "torch": torch.__version__, "files": dict(beside or {}),
        "condition_ranges": condition_ranges or {},
        # what a consumer checks before it trusts the folder: the graph's and each file's SHA-256,
        # and the sidecar's own (of its JSON without this key, sorted keys, compact)
        "sha256": {path.name: file_sha256(path), **{n: file_sha256(out_dir / n) for n in (beside or {}).values()}},
    }
    sidecar["sidecar_sha256"] = sidecar_digest(sidecar)
    write_json_atomic(out_dir / "model.json", sidecar)
    return sidecar


def sidecar_digest(sidecar: dict) -> str:
    """The sidecar's own checksum: SHA-256 of its JSON without `sidecar_sha256` (sorted keys,
    separators ',' and ':')."""
    body = {k: v for k, v in sidecar.items() if k != "sidecar_sha256"}
    return text_sha256(json.dumps(body, sort_keys=True, separators=(",", ":")))


def describe(sidecar: dict) -> str:
    """One line for the command line."""
    rt = sidecar["round_trip"]
    return (f"exported {sidecar['domain']} {sidecar['family']} as {sidecar['format']} ({sidecar['file']}): "
            f"{len(sidecar['inputs'])} inputs, {len(sidecar['outputs'])} outputs; round trip on {rt['rows']} rows: "
            f"max relative difference {rt['max_relative_difference_all']:.2e}"
            + "".join(f" ({c['entries_cut_differently']} of {c['entries']} {name} entries cut differently at a "
                      f"comparison's edge, in {c['rows_with_one']} rows left out of it)"
                      for name, c in rt.get("cut_by_comparison", {}).items() if c["entries_cut_differently"])
            + f"; validation {sidecar['validation'].get('gate', 'none')}")


class ExportedSampler:
    """An export folder as a consumer uses it: the graph in onnxruntime (or TorchScript), fed
    the conditions it is given and the noise its sidecar names, drawn here with numpy's PCG64 as
    a C++ caller draws it with its own generator. What `simgan generate --export` runs."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        side = self.folder / "model.json"
        try:
            self.sidecar = json.loads(side.read_text())
            self.inputs = [Port(**{**p, "shape": tuple(p["shape"])}) for p in self.sidecar["inputs"]]
            self.outputs = [Port(**{**p, "shape": tuple(p["shape"])}) for p in self.sidecar["outputs"]]
            self.fmt, self.path = self.sidecar["format"], self.folder / self.sidecar["file"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SimganError(f"--export {self.folder}: no readable export sidecar model.json ({exc}); expected "
                              "a folder written by `simgan export`") from None
        if self.fmt not in FORMATS or not self.path.is_file():
            raise SimganError(f"--export {self.folder}: the sidecar names {self.sidecar.get('file')!r} in format "
                              f"{self.fmt!r}, which is not there")
        self._check_files()
        self.conditions = [p for p in self.inputs if p.noise is None]
        bad_noise = [f"{p.name}: {p.noise!r}" for p in self.inputs if p.noise not in (None, "normal", "uniform")]
        if bad_noise:
            raise SimganError(f"--export {self.folder}: model.json names noise kinds it does not draw "
                              f"({', '.join(bad_noise)}); expected normal or uniform")
        if self.fmt == "onnx":
            ort = require("onnxruntime")
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            try:
                session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime's own error types
                raise SimganError(f"--export {self.folder}: {self.path.name} does not load in onnxruntime "
                                  f"({str(exc).splitlines()[0][:300]})") from None
            self._check_ports([(i.name, i.shape) for i in session.get_inputs()],
                              [(o.name, o.shape) for o in session.get_outputs()])
            self._run = lambda feed: session.run(None, feed)
        else:
            try:
                graph = torch.jit.load(str(self.path))
            except Exception as exc:
                raise SimganError(f"--export {self.folder}: {self.path.name} does not load as TorchScript "
                                  f"({str(exc).splitlines()[0][:300]})") from None

            def run(feed):
                with torch.no_grad():
                    out = graph(*(torch.from_numpy(feed[p.name]) for p in self.inputs))
                return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
            self._run = run

    def _check_files(self) -> None:
        """The sidecar's own checksum, then the graph's and every listed file's, before anything
        is loaded: an edited sidecar (noise kinds swapped), another model's graph copied in, a
        corrupt file or another voxel layout is named here, not found out after generating."""
        where = f"--export {self.folder}"
        if "sidecar_sha256" not in self.sidecar or not isinstance(self.sidecar.get("sha256"), dict):
            raise SimganError(f"{where}: model.json carries no checksums (an export of an older simgan, or not "
                              "written by `simgan export`): export the model again")
        if sidecar_digest(self.sidecar) != self.sidecar["sidecar_sha256"]:
            raise SimganError(f"{where}: model.json was changed after export (its checksum does not match its "
                              "contents): export the model again")
        names = {self.sidecar["file"], *self.sidecar.get("files", {}).values()}
        for name in sorted(names):
            want = self.sidecar["sha256"].get(name)
            path = self.folder / name
            if want is None:
                raise SimganError(f"{where}: model.json lists {name} without its checksum; export the model again")
            if not path.is_file():
                raise SimganError(f"{where}: {name}, which model.json lists, is not there")
            if file_sha256(path) != want:
                raise SimganError(f"{where}: {name} is not the file exported with this model.json (SHA-256 "
                                  f"{file_sha256(path)[:12]}, recorded {want[:12]}): it was replaced or damaged "
                                  "after export; export the model again")

    def _check_ports(self, inputs: list[tuple], outputs: list[tuple]) -> None:
        """The graph's inputs and outputs as the sidecar states them: names, order and rank."""
        for kind, ports, have in (("inputs", self.inputs, inputs), ("outputs", self.outputs, outputs)):
            want = [(p.name, len(p.shape)) for p in ports]
            got = [(name, len(shape)) for name, shape in have]
            if want != got:
                raise SimganError(f"--export {self.folder}: the graph's {kind} {got} are not the sidecar's {want} "
                                  "(name, rank): the graph belongs to another model; export the model again")

    def file(self, what: str) -> Path:
        """A file the export carries beside the graph (the sidecar's `files`)."""
        name = self.sidecar.get("files", {}).get(what)
        if not name or not (self.folder / name).is_file():
            raise SimganError(f"--export {self.folder}: no {what} file beside the graph (the sidecar lists "
                              f"{sorted(self.sidecar.get('files', {}))}); export it again with this version")
        return self.folder / name

    def __call__(self, conditions: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """The outputs for these condition inputs (in the sidecar's order, N rows each)."""
        n = len(conditions[0])
        feed = {p.name: np.ascontiguousarray(x, dtype=p.dtype) for p, x in zip(self.conditions, conditions)}
        for p in self.inputs:
            if p.noise is not None:
                shape = (n, *p.shape[1:])
                feed[p.name] = (rng.random(shape, dtype=np.float32) if p.noise == "uniform"
                                else rng.standard_normal(shape, dtype=np.float32)).astype(p.dtype, copy=False)
        return self._run(feed)
