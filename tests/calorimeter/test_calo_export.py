"""`simgan export` of the calorimeter models: the dense voxel draw of the graph is the sparse
draw of `simgan generate` given the same noise, and onnxruntime returns what the PyTorch
graph returns for every model kind (two-stage VAE and GAN, one-stage VAE)."""

import json

import numpy as np
import pytest
import torch

from pipeline.cli import main
from simgan.domains import get_domain, load_config, model_from_checkpoint
from simgan.domains.calorimeter.data import calochallenge as cc
from simgan.domains.calorimeter.models.energy import layer_energies
from simgan.export import export_graph, round_trip, run_exported
from simgan.train.trainer import Trainer
from tests.calorimeter.test_models import _layered
from tests.conftest import QUICKSTART

THRESHOLD = 0.01515


def _perturbed(m):
    """Away from the initialisation's near-constant head: hits and shares that vary by voxel (the
    energy flow as fitted)."""
    g = torch.Generator().manual_seed(3)
    flow = {id(p) for p in m.energy.parameters()} if hasattr(m, "energy") else set()
    with torch.no_grad():
        for p in m.parameters():
            if id(p) not in flow:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return m


@pytest.mark.parametrize("family,calibrate", [("vae", False), ("vae", True), ("gan", False)])
def test_the_dense_draw_is_the_sparse_draw_given_the_same_noise(g4_sample, family, calibrate):
    data = cc.read(g4_sample, max_events=30)
    over = {"voxel_noise": "false", "likelihood_weight": 0} if family == "gan" else {}
    m, tables, lv = _layered(data, family, **over)
    m = _perturbed(m)
    if calibrate:  # a monotone map other than the identity
        m.calibration.mul_(1.1)
    shares, lcond = tables["layers"]
    lid = m.layer_index_of(lcond)
    e_layer = m.layer_energy_of(lcond)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        raw = m.raw_shape(lcond, g)
    u = None if family == "gan" else torch.rand(raw.shape[0], m.v_max, generator=g)
    eps = torch.randn(raw.shape[0], m.v_max, generator=g)
    _, idx, x = m.draw_voxels(raw, lid, e_layer, None, calibrate, u=u, eps=eps)
    sparse = torch.zeros(len(e_layer), m.v_max)
    sparse.view(-1)[idx] = x  # (idx: the place in the (m, v_max) grid)
    dense = m.draw_dense(raw, lid, e_layer, u, eps, calibrate)
    assert 0.02 < (sparse > 0).float().mean() < 0.98  # a draw with hits and holes
    torch.testing.assert_close(dense, sparse, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dense.sum(1), e_layer, rtol=1e-5, atol=0)  # each layer holds its energy
    assert ((dense == 0) | (dense >= THRESHOLD * (1 - 1e-6))).all()
    # a layer of energy 0 (empty in the flow's draw) comes out empty
    assert (m.draw_dense(raw[:3], lid[:3], torch.zeros(3), None if u is None else u[:3], eps[:3]) == 0).all()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, g4_sample):
    """The quickstart's two-stage VAE, tiny, trained a few steps on the Geant4 sample."""
    tmp = tmp_path_factory.mktemp("calo_export")
    cfg = load_config(QUICKSTART, [f"runs_dir={tmp}", "model.hidden=[16,16]", "model.latent_dim=4",
                                   "model.energy.steps=3", "model.energy.hidden=[16,16]", "model.energy.transforms=2",
                                   "train.steps=6", "train.batch_size=16", "train.val_every=3", "train.val_events=20",
                                   "train.checkpoint_every=3", "train.log_every=3", "train.mlflow=false",
                                   "train.progress=false", "train.calibrate=true"])
    Trainer(cfg, get_domain("calorimeter"), g4_sample, g4_sample, tmp / "train", progress=False).fit()
    get_domain("calorimeter").after_training(cfg, tmp / "train" / "model.pt", g4_sample)
    return tmp / "train" / "model.pt"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "export"
    assert main(["export", "--checkpoint", str(trained), "--format", "onnx", "--out", str(out)]) == 0
    return out


def test_the_exported_shower_sampler_is_the_model(trained, exported):
    out = exported
    side = json.loads((out / "model.json").read_text())
    assert side["domain"] == "calorimeter" and side["family"] == "vae" and (out / "model.onnx").is_file()
    names = [p["name"] for p in side["inputs"]]
    assert names == ["incident_energy", "z_energy", "z_layer", "hit_uniform", "share_normal"]
    noise = {p["name"]: p["noise"] for p in side["inputs"]}
    assert noise["hit_uniform"] == "uniform" and noise["z_energy"] == noise["share_normal"] == "normal"
    assert side["inputs"][0]["units"] == "MeV" and side["inputs"][0]["dtype"] == "float64"
    assert side["outputs"][0]["shape"] == ["N", 6480] and side["outputs"][0]["units"] == "MeV"
    assert any("calibration" in n for n in side["notes"])  # train.calibrate=true: the map is in the graph
    assert side["round_trip"]["max_relative_difference_all"] <= 1e-4
    # the graph's layer sums are the energy flow's layer energies for its normals; nothing below threshold
    model, ckpt = model_from_checkpoint(trained)
    graph = get_domain("calorimeter").export_graph(model, ckpt)
    inputs = graph.example(64, torch.Generator().manual_seed(8))
    showers = run_exported(out / "model.onnx", "onnx", graph, inputs)[0]
    with torch.no_grad():
        cond = model.transform.cond(inputs[0])
        want = model.energy.from_v(model.energy.flow(cond).transform.inv(inputs[1]), inputs[0]).numpy()
    got = layer_energies(showers, model.layer_voxels, THRESHOLD)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert ((showers == 0) | (showers >= THRESHOLD * (1 - 1e-6))).all() and (want == 0).any()


@pytest.mark.parametrize("kind", ["gan_shower_code", "one_stage_vae"])
def test_every_calorimeter_model_kind_exports(g4_sample, tmp_path, kind):
    data = cc.read(g4_sample, max_events=40)
    if kind == "gan_shower_code":
        m, _, _ = _layered(data, "gan", shower_latent_dim=3)
        names = ["incident_energy", "z_energy", "z_layer", "z_shower", "hit_uniform", "share_normal"]
    else:
        from simgan.domains.calorimeter.models.vae import ConditionalVAE, VAEConfig
        lv = [l.n_voxels for l in data.binning.layers if l.n_voxels]
        m = ConditionalVAE(VAEConfig(hidden=[16], latent_dim=4), data.binning.n_voxels, lv, threshold_mev=THRESHOLD)
        m.fit(data.energies, data.showers, None, data.binning)
        names = ["incident_energy", "noise"]
    m = _perturbed(m).eval()
    ranges = {"incident_energy": [float(data.energies.min()), float(data.energies.max())]}
    graph = get_domain("calorimeter").export_graph(m, {"condition_ranges": ranges})
    assert [p.name for p in graph.inputs] == names
    # the GAN as TorchScript, the VAE as ONNX
    fmt, path = ("torchscript", tmp_path / "model.pt") if kind == "gan_shower_code" else ("onnx", tmp_path / "model.onnx")
    export_graph(graph, fmt, path)
    # (weights drawn far from a trained model's: log shares of tens, whose float32 rounding exp() turns
    # into relative differences of 1e-4 between onnxruntime's and PyTorch's matrix products)
    check = round_trip(path, fmt, graph)
    assert check["max_relative_difference_all"] <= 2e-3
    assert check["cut_by_comparison"]["showers"]["entries_cut_differently"] <= 10
    if kind == "one_stage_vae":  # the graph with sample's draws is sample
        e = torch.as_tensor(data.energies)
        want = m.sample(e, None, torch.Generator().manual_seed(2))
        noise = torch.randn(len(e), m.noise_dim, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(graph.module(e, noise), want)


def test_showers_generated_through_onnxruntime_from_the_export_folder(exported, g4_sample, tmp_path, capsys):
    """`simgan generate --export DIR`: the folder alone (graph, sidecar, voxel layout) gives
    showers for a file's energies, as a C++ consumer would; a folder that is no export is refused
    by name, with nothing written."""
    out = exported
    assert json.loads((out / "model.json").read_text())["files"] == {"binning": "binning.xml"}
    gen = tmp_path / "gen.h5"
    assert main(["generate", "--export", str(out), "--energies-from", str(g4_sample), "--out", str(gen),
                 "--events", "50", "--batch-size", "20", "-q"]) == 0
    data, ref = cc.read(gen), cc.read(g4_sample, max_events=50)
    np.testing.assert_array_equal(data.energies, ref.energies)
    assert data.showers.shape == (50, 6480) and np.isfinite(data.showers).all()
    assert ((data.showers == 0) | (data.showers >= THRESHOLD * (1 - 1e-6))).all()
    assert (data.showers.sum(1) > 0).all()
    # the same seed gives the same showers; another seed others
    again = tmp_path / "again.h5"
    assert main(["generate", "--export", str(out), "--energies-from", str(g4_sample), "--out", str(again),
                 "--events", "50", "--batch-size", "20", "-q"]) == 0
    np.testing.assert_array_equal(cc.read(again).showers, data.showers)
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad.h5"
    assert main(["generate", "--export", str(tmp_path / "empty"), "--energies-from", str(g4_sample),
                 "--out", str(bad)]) == 2
    assert "model.json" in capsys.readouterr().err and not bad.exists()
