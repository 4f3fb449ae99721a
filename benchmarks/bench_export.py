"""Generation throughput of an exported model against the PyTorch module it was exported from:
the same graph (`Domain.export_graph`: conditions and noise in, the sample or, for a trace
model, the parts its traces are drawn from, out), the same inputs, the same CPU, one run;
onnxruntime (one session, CPU provider, the usable CPUs as its threads) or TorchScript against
PyTorch eager, medians of 3 timed calls per batch size after a warm-up. For a calorimeter
model also `simgan generate`'s own sampler (fp32), whose voxel draw is sparse and skips empty
layers where the graph draws the dense grid.

    python benchmarks/bench_export.py CHECKPOINT [onnx|torchscript]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info, median_seconds  # noqa: E402
from simgan.cpus import usable_cpus  # noqa: E402
from simgan.domains import get_domain, model_from_checkpoint  # noqa: E402
from simgan.export import GRAPH_FILES, export_graph  # noqa: E402


def main(checkpoint: str, fmt: str = "onnx", batches=(1000, 10000)) -> dict:
    model, ckpt = model_from_checkpoint(checkpoint)
    domain = ckpt["model_args"]["domain"]
    graph = get_domain(domain).export_graph(model, ckpt)
    module = graph.module.eval()
    out = {"machine": machine_info(), "checkpoint": checkpoint, "domain": domain,
           "family": ckpt["model_args"].get("config", {}).get("family", ""), "format": fmt,
           "graph_outputs": [p.name for p in graph.outputs], "post_step_outside_the_graph": bool(graph.post_step)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / GRAPH_FILES[fmt]
        export_graph(graph, fmt, path)
        if fmt == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = usable_cpus()
            opts.log_severity_level = 3
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

            def exported(inputs):
                return sess.run(None, {p.name: x.numpy() for p, x in zip(graph.inputs, inputs)})
        else:
            loaded = torch.jit.load(str(path))

            def exported(inputs):
                with torch.no_grad():
                    return loaded(*inputs)

        def eager(inputs):
            with torch.no_grad():
                return module(*inputs)

        for b in batches:
            inputs = graph.example(b, torch.Generator().manual_seed(0))
            torch_rate = b / median_seconds(lambda: eager(inputs))
            exported_rate = b / median_seconds(lambda: exported(inputs))
            out[f"batch{b}_rows_per_s_pytorch"] = torch_rate
            out[f"batch{b}_rows_per_s_{fmt}"] = exported_rate
            out[f"batch{b}_ratio_{fmt}_to_pytorch"] = exported_rate / torch_rate
            if domain == "calorimeter":  # what `simgan generate` runs: the sparse draw, empty layers skipped
                extra = inputs[1] if ckpt.get("extra_conditions") else None
                rate = b / median_seconds(lambda: model.sample(inputs[0], extra, torch.Generator().manual_seed(0)))
                out[f"batch{b}_rows_per_s_simgan_generate"] = rate
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "onnx"), indent=2))
