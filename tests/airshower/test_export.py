"""`simgan export` of the footprint models: ONNX (onnxruntime) and TorchScript graphs of the
conditions and the noise that return what the PyTorch model returns, and a complete sidecar."""

import json

import numpy as np
import pytest
import torch

from pipeline.cli import main
from simgan.domains import get_domain, load_config, model_from_checkpoint
from simgan.domains.airshower import io as aio
from simgan.domains.airshower.simulator import ArrayParams, simulate
from simgan.train.trainer import Trainer
from tests.conftest import REPO

AIR = REPO / "configs" / "experiment" / "airshower_quickstart.yaml"
SMALL = ["model.width=8", "model.depth=1", "model.latent_sampler=prior", "train.steps=4", "train.batch_size=32", "train.val_every=4",
         "train.val_events=50", "train.checkpoint_every=4", "train.log_every=2", "train.mlflow=false",
         "train.progress=false"]


def _trained(tmp_path, traces: bool, overrides=()):
    p = ArrayParams(traces=traces, mass_A=0)
    data = aio.from_simulation(simulate(300, 8, p, 150), p, 8)
    train = aio.write(tmp_path / "train.h5", data.subset(slice(0, 250)))
    val = aio.write(tmp_path / "val.h5", data.subset(slice(250, 300)))
    cfg = load_config(AIR, [f"runs_dir={tmp_path}", *SMALL, *overrides])
    Trainer(cfg, get_domain("airshower"), train, val, tmp_path / "train", progress=False).fit()
    return tmp_path / "train" / "model.pt", data


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A footprint VAE (no traces) trained a few steps, and its data."""
    return _trained(tmp_path_factory.mktemp("plain"), traces=False)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_footprint_sampler_is_the_model(plain, tmp_path, fmt):
    ckpt_path, data = plain
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(ckpt_path), "--format", fmt, "--out", str(out)]) == 0
    side = json.loads((out / "model.json").read_text())
    assert (out / side["file"]).is_file() and side["format"] == fmt and side["domain"] == "airshower"
    assert [p["name"] for p in side["inputs"]] == ["conditions", "z", "eps"]
    assert side["inputs"][1]["noise"] == "normal" and side["outputs"][0]["shape"] == ["N", 3, 9, 9]
    assert all(p["units"] and p["meaning"] for p in side["inputs"] + side["outputs"])
    assert side["validation"]["gate"] == "not validated" and len(side["checkpoint_sha256"]) == 64
    assert side["round_trip"]["max_relative_difference_all"] <= 1e-4
    # the graph with the draws `sample` makes for a seed returns `sample`'s footprints
    model, ckpt = model_from_checkpoint(ckpt_path)
    dom = get_domain("airshower")
    graph = dom.export_graph(model, ckpt)
    c = torch.as_tensor(dom.condition_matrix(data.subset(slice(0, 40))))
    want = model.sample(c, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    z = torch.randn(40, model.cfg.latent_dim, generator=g)
    eps = torch.randn(2, 40, 81, generator=g).transpose(0, 1).contiguous()
    from simgan.export import run_exported

    got = run_exported(out / side["file"], fmt, graph, (c, z, eps))[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-3)
    assert (want[:, 2] > 0).any()  # some stations triggered
    # footprints through the exported graph from the folder alone, for a file's conditions
    src = aio.write(tmp_path / "src.h5", data.subset(slice(0, 40)))
    assert main(["generate", "--export", str(out), "--energies-from", str(src), "--out", str(tmp_path / "g.h5"),
                 "--batch-size", "16"]) == 0
    gen = aio.read(tmp_path / "g.h5")
    assert len(gen) == 40 and np.isfinite(gen.signal).all()
    assert (gen.signal[gen.triggered] > 0).all() and gen.triggered.sum(axis=(1, 2)).max() > 0
    # a second export into the same folder is refused; nothing else is written
    assert main(["export", "--checkpoint", str(ckpt_path), "--out", str(out)]) == 2
    assert sorted(f.name for f in out.iterdir()) == sorted([side["file"], "model.json"])


def test_a_trace_model_exports_the_parts_its_traces_are_drawn_from(tmp_path, capsys):
    """A trace VAE with the latent flow (model.latent_sampler=flow): the flow is fitted when
    training completes, a seed repeats its codes, which are not the prior's; the export holds
    the flow and returns the parts `trace_parts` makes from the flow's codes."""
    ckpt_path, data = _trained(tmp_path, traces=True, overrides=["model.latent_sampler=flow", "model.flow_steps=20"])
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(ckpt_path), "--out", str(out)]) == 0
    side = json.loads((out / "model.json").read_text())
    assert [p["name"] for p in side["inputs"]] == ["conditions", "z", "station_latent", "eps"]
    assert "latent flow" in side["inputs"][1]["meaning"]
    assert [p["name"] for p in side["outputs"]] == ["signal", "window_ns", "arrival", "muon_share", "muon_quantum",
                                                     "tot_probability"]
    assert "draw_traces" in side["post_step"], side["round_trip"]
    assert side["round_trip"]["max_relative_difference_all"] <= 1e-4, side["round_trip"]["max_relative_difference"]
    # the exported parts, finished by the reference post-step, are the model's footprints for the same draws
    from simgan.domains.airshower.models import finish_traces, trace_parts
    from simgan.export import run_exported

    model, ckpt = model_from_checkpoint(ckpt_path)
    graph = get_domain("airshower").export_graph(model, ckpt)
    c = torch.as_tensor(get_domain("airshower").condition_matrix(data.subset(slice(0, 30))))
    g = torch.Generator().manual_seed(2)
    draws = (torch.randn(30, model.cfg.latent_dim, generator=g),
             torch.randn(30, model.cfg.station_latent_dim, 9, 9, generator=g), torch.randn(30, 2, 81, generator=g))
    signal, window, arrival, share, quantum, tot = (torch.as_tensor(x) for x in run_exported(out / "model.onnx", "onnx",
                                                                                         graph, (c, *draws)))
    assert bool(model.flow_fitted) and model.uses_flow
    run_info = json.loads((tmp_path / "train" / "run_info.json").read_text())
    assert run_info["calibration"]["latent_flow_steps"] == 20 and np.isfinite(run_info["calibration"]["latent_flow_nll"])
    with torch.no_grad():
        code = model.draw_codes(c, torch.Generator().manual_seed(2))
        assert torch.equal(code, model.draw_codes(c, torch.Generator().manual_seed(2)))
        assert not torch.allclose(code, draws[0])  # the flow's codes, not the prior's draws
        ref = trace_parts(model, model.decoder, c, code, *draws[1:])
    np.testing.assert_allclose(arrival.numpy(), ref[2].numpy(), rtol=1e-4, atol=1e-7)
    fp = finish_traces(model, c, signal, ref[1], arrival, share, quantum[:, :1], tot, torch.Generator().manual_seed(0))
    trig = fp[:, 2] > 0
    assert trig.any() and torch.allclose(fp[:, 3:].sum(1)[trig], fp[:, 0][trig], rtol=1e-4)
    # the post-step from the sidecar's parameters (models.footprints_from_parts, the reference code):
    # the same footprints as finish_traces from the model itself, given the same draws
    from simgan.domains.airshower.models import Tank, footprints_from_parts
    assert side["post_step_parameters"]["trace"] == model.trace
    parts = run_exported(out / "model.onnx", "onnx", graph, (c, *draws))
    got = footprints_from_parts(Tank(side["post_step_parameters"]["trace"]), *(torch.as_tensor(x) for x in parts),
                                torch.Generator().manual_seed(0))
    torch.testing.assert_close(got[:, 2], fp[:, 2])  # the same triggers
    torch.testing.assert_close(got[:, 3:], fp[:, 3:], rtol=1e-4, atol=1e-5)  # the same traces
    torch.testing.assert_close(got[:, :2], fp[:, :2], rtol=1e-4, atol=1e-2)  # signal, start time (ns)
    # and from the folder alone, for a file's conditions
    assert main(["generate", "--export", str(out), "--energies-from", str(tmp_path / "val.h5"),
                 "--out", str(tmp_path / "g.h5")]) == 0
    gen = aio.read(tmp_path / "g.h5")
    assert gen.traces is not None and len(gen) == 50
    on = gen.triggered
    np.testing.assert_allclose(gen.traces.sum(-1)[on], gen.signal[on], rtol=1e-4)


def test_export_refuses_what_it_cannot_do(plain, tmp_path, capsys):
    ckpt_path, _ = plain
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"gate": {"pass": True, "checks": {}}, "candidate_checkpoint_sha256": "0" * 64}))
    assert main(["export", "--checkpoint", str(ckpt_path), "--metrics", str(bad), "--out", str(tmp_path / "e")]) == 2
    assert "another checkpoint" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_an_export_folder_is_checked_before_anything_is_drawn(plain, tmp_path, capsys, small_disk):
    """The sidecar carries the checksums of the graph, of each file beside it and of itself:
    an edited sidecar (noise kinds swapped), a damaged or replaced graph are named before
    generating; options the export path cannot honour are refused; conditions outside the
    training range (in the sidecar) are warned about as on the checkpoint path; an export onto a
    read-only place or a full disk says so and leaves nothing."""
    import os
    import shutil

    ckpt_path, data = plain
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(ckpt_path), "--out", str(out)]) == 0
    side = json.loads((out / "model.json").read_text())
    assert set(side["sha256"]) == {"model.onnx"} and len(side["sidecar_sha256"]) == 64
    assert side["condition_ranges"] and set(side["condition_ranges"]) <= set(data.conditions)
    src = aio.write(tmp_path / "src.h5", data.subset(slice(0, 30)))
    gen = ["generate", "--export", None, "--energies-from", str(src), "--out", str(tmp_path / "g.h5")]

    def refused(folder, msg, *extra):
        capsys.readouterr()
        args = [str(folder) if a is None else a for a in gen]
        assert main([*args, *extra]) == 2
        assert msg in capsys.readouterr().err
        assert not (tmp_path / "g.h5").exists()

    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    s = json.loads((edited / "model.json").read_text())
    s["inputs"][1]["noise"] = "uniform"  # z drawn uniform: 'generates without a word' before
    (edited / "model.json").write_text(json.dumps(s))
    refused(edited, "model.json was changed after export")
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    (damaged / "model.onnx").write_bytes((out / "model.onnx").read_bytes()[:1000])
    refused(damaged, "model.onnx is not the file exported with this model.json")
    refused(out, "--compare-geant4 go with --checkpoint or --model", "--compare-geant4", "5")
    refused(out, "--precision bf16 go with --checkpoint or --model", "--precision", "bf16")
    # outside the training range: a warning, as from the checkpoint
    far = data.subset(slice(0, 30))
    key = "core_x_m"
    lo, hi = side["condition_ranges"][key]
    far.conditions[key] = np.full(30, hi + (hi - lo), np.float32)
    capsys.readouterr()
    assert main([*(str(out) if a is None else a for a in gen[:4]), str(aio.write(tmp_path / "far.h5", far)),
                 "--out", str(tmp_path / "far_gen.h5")]) == 0
    assert f"have {key} outside the training" in capsys.readouterr().err
    # a read-only place: named before the export; a full disk: nothing left
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if not os.access(ro, os.W_OK):  # (root writes anywhere; the full disk below still applies)
            assert main(["export", "--checkpoint", str(ckpt_path), "--out", str(ro / "x")]) == 2
            assert "is not writable" in capsys.readouterr().err and not (ro / "x").exists()
    finally:
        os.chmod(ro, 0o700)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(ckpt_path), "--out", str(small_disk / "x")]) == 2
    err = capsys.readouterr().err
    assert "writing failed" in err and "model.onnx" in err and not (small_disk / "x").exists()
    assert not list(small_disk.iterdir())
