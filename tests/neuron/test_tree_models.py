"""The tree families: growth steps that cannot make an invalid neuron, whatever the weights, and
the tree VAE trained through the shared trainer, sampling neurons (and their images) by class."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from simgan.domains.neuron import io as nio
from simgan.domains.neuron import trees as nt
from simgan.domains.neuron.simulator import Projection, project_trees
from simgan.domains.neuron.treecode import assemble
from simgan.domains.neuron.treenet import TreeDecoder
from simgan.errors import SimganError
from tests.conftest import REPO

NEURON = REPO / "configs/experiment/neuron_quickstart.yaml"


def grow_untrained(seed: int, n: int, max_depth: int, max_sections: int) -> nt.Trees:
    torch.manual_seed(seed)
    dec = TreeDecoder(6, 32, 3, 12, max_depth, max_sections)
    for p in dec.parameters():  # wide weights: extreme steps, not only typical ones
        torch.nn.init.normal_(p, std=1.0)
    g = torch.Generator().manual_seed(seed)
    out = dec.grow(torch.randn(n, 6, generator=g), g)
    a = {k: v.double().numpy() if v.is_floating_point() else v.numpy() for k, v in out.items()}
    return assemble(a["neuron"], a["parent"], a["type"], a["end"], a["log_len"], a["soma_radius"],
                    np.full(3, 0.6), np.random.default_rng(seed))


@pytest.mark.parametrize("seed, max_depth, max_sections", [(0, 64, 2048), (1, 5, 60), (2, 12, 400)])
def test_untrained_decoders_grow_only_valid_neurons(tmp_path, seed, max_depth, max_sections):
    morphio = pytest.importorskip("morphio")
    neurom = pytest.importorskip("neurom")
    from neurom.check import morphology_checks as mc

    trees = grow_untrained(seed, 12, max_depth, max_sections)
    assert len(trees) == 12
    names = [f"n{i}" for i in range(len(trees))]
    nt.write_container(tmp_path / "grown.h5", trees, names)
    col = morphio.Collection(str(tmp_path / "grown.h5"))
    for name, t in zip(names, trees):
        nt.check_tree(t, name)
        kids = t.n_children()
        assert set(np.unique(kids)) <= {0, 2} and t.n_sections <= max_sections
        depth = np.zeros(t.n_sections, int)
        for i, p in enumerate(t.parents):  # parents come first
            assert p < i
            depth[i] = 0 if p < 0 else depth[p] + 1
        assert depth.max() < max_depth
        m = neurom.load_morphology(col.load(name))
        for check in (mc.has_no_jumps, mc.has_all_nonzero_section_lengths, mc.has_no_dangling_branch,
                      mc.has_unifurcation):
            assert check(m).status, (name, check.__name__)


@pytest.fixture(scope="module")
def neurons(tmp_path_factory):
    """18 NeuroTS neurons with their trees: 12 to train on, 6 to validate with."""
    from pipeline.cli import main
    d = tmp_path_factory.mktemp("tree_models")
    assert main(["simulate", "-c", str(NEURON), "-q", "--out", str(d / "all.h5"), "simulate.events=18",
                 "simulate.workers=2"]) == 0
    ni = nio.read(d / "all.h5")
    nio.write(d / "train.h5", ni.subset(np.arange(12)))
    nio.write(d / "val.h5", ni.subset(np.arange(12, 18)))
    return d


@pytest.mark.parametrize("sampler", ["prior", "flow"])
def test_the_tree_vae_learns_real_neurons_and_samples_trees_by_class(tmp_path, neurons, sampler):
    from simgan.domains import get_domain, load_config, model_from_checkpoint
    from simgan.train.trainer import Trainer

    cfg = load_config(NEURON, [f"runs_dir={tmp_path}", "model=neuron_tree_vae", "model.hidden=24", "train.steps=30",
                               "train.batch_size=8", "train.log_every=5", "train.val_every=30", "train.val_events=6",
                               "train.checkpoint_every=15", "train.mlflow=false", "train.progress=false",
                               "model.max_sections=600", f"model.latent_sampler={sampler}", "model.flow_steps=20"])
    domain = get_domain("neuron")
    info = Trainer(cfg, domain, neurons / "train.h5", neurons / "val.h5", tmp_path / "train", progress=False).fit()
    assert info["complete"]
    rows = [json.loads(x) for x in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    per_section = [r["recon_per_section"] for r in rows if "recon_per_section" in r]
    assert np.mean(per_section[-3:]) < np.mean(per_section[:2]) - 0.5, per_section  # the likelihood improves
    model, ckpt = model_from_checkpoint(tmp_path / "train" / "model.pt")
    assert ckpt["model_args"]["config"]["family"] == "neuron_tree_vae"
    assert model.diameters.tolist() == pytest.approx([0.6, 0.6, 0.6])  # NeuroTS's uniform diameter, learnt
    if sampler == "flow":
        assert info["calibration"]["latent_flow_steps"] == 20 and model.uses_flow
    c = torch.tensor([[0, 0.2], [1, 0.2], [2, 0.3]] * 2)
    trees = model.sample_trees(c, torch.Generator().manual_seed(3))
    again = model.sample_trees(c, torch.Generator().manual_seed(3))
    assert len(trees) == 6 and np.array_equal(trees.points, again.points)  # a seed repeats the neurons
    for t in trees:
        nt.check_tree(t, "sampled")
    # the images are the trees' projections, with the simulator's code
    images = model.sample(c, None, torch.Generator().manual_seed(3)).numpy()
    np.testing.assert_array_equal(images, project_trees(trees, Projection()))
    # the generate path keeps the trees beside the images
    val = nio.read(neurons / "val.h5")
    gen = domain.sample(model, val, 4, "fp32", seed=11)
    assert len(gen.trees) == len(val) and gen.images.shape == val.images.shape
    np.testing.assert_array_equal(gen.images, project_trees(gen.trees, Projection()))
    nio.write(tmp_path / "gen.h5", gen)
    assert np.allclose(nio.read(tmp_path / "gen.h5").trees.points, gen.trees.points, atol=nt.QUANTUM_UM)
    with pytest.raises(SimganError, match="neuron_tree_vae: its export .* is not built yet"):
        domain.export_graph(model, ckpt)


def test_a_tree_family_refuses_images_without_trees(tmp_path, neurons, capsys):
    from pipeline.cli import main
    ni = nio.read(neurons / "train.h5")
    plain = nio.write(tmp_path / "plain.h5", nio.NeuronImages(ni.images, ni.cell_class, ni.randomness, attrs=ni.attrs))
    assert main(["run", "-c", str(NEURON), "-q", f"runs_dir={tmp_path / 'runs'}", f"prepare.input={plain}",
                 "model=neuron_tree_vae", "--until", "prepare"]) == 2
    err = capsys.readouterr().err
    assert "plain.h5: no group 'trees': model family neuron_tree_vae learns morphologies" in err
    with pytest.raises(SimganError, match="section 0 has 1 children"):
        from simgan.domains.neuron.treecode import encode
        t = ni.trees[0]
        encode(nt.Tree(t.points[:t.offsets[2]], t.diameters[:t.offsets[2]], t.offsets[:3], t.types[:2],
                       np.array([-1, 0]), t.soma))


def test_the_tiny_tree_chain_validates_the_trees_and_registers(tmp_path):
    """neuron_quickstart_tree.yaml shrunk: NeuroTS trees -> tree VAE -> generated neurons with
    their trees -> validation as images and as trees (validity checked by the gate) -> MLflow."""
    from pipeline.runner import run_chain
    from simgan.domains import load_config
    from tests.neuron.test_neuron import NEURON_TINY, OPEN_GATE
    cfg = load_config(NEURON.parent / "neuron_quickstart_tree.yaml",
                      [f"runs_dir={tmp_path}", f"register.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                       "prepare.fractions=[0.5,0.2,0.3]", *NEURON_TINY, "simulate.events=72", "model.hidden=16",
                       *OPEN_GATE, "validate.gate.auc_morphometrics_max=1.0"])
    assert cfg.model.family == "neuron_tree_vae" and cfg.validate.gate.invalid_fraction_max == 0.0
    assert run_chain(cfg, progress=False) == 0
    run = cfg.run_dir
    gen = nio.read(run / "generate" / "generated.h5")
    assert gen.trees is not None and len(gen.trees) == len(gen)
    m = json.loads((run / "validate" / "metrics.json").read_text())
    assert m["trees"]["validity"] == 1.0 and m["gate"]["checks"]["invalid_fraction"]["pass"]
    assert m["gate"]["checks"]["invalid_fraction"]["floor"] == 0.0 and "auc_morphometrics" in m["gate"]["checks"]
    assert "## Trees (NeuroM, TMD)" in (run / "validate" / "report.md").read_text()
    assert (run / "validate" / "trees.png").is_file()
