"""The neuron domain: NeuroTS growth and projection (the README's sanity figures), the image
format and its checks, SWC folders, the fly neurons navis ships, and the chain end to end."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from simgan.domains.neuron import io as nio
from simgan.domains.neuron.simulator import CLASSES, Projection, grow, grown_tree, image_and_truth, project
from simgan.errors import SimganError
from tests.conftest import REPO

NEURON = REPO / "configs/experiment/neuron_quickstart.yaml"
SEEDS = range(100, 103)


def _neuron(cls, r, seed):
    tree = grown_tree(cls, r, seed)
    img, truth = image_and_truth(tree)
    return tree, img, truth


@pytest.fixture(scope="module")
def grown():
    """Per class and randomness (0.1, 0.4): (images, truth) of seeds 100-102."""
    out = {}
    for cls in CLASSES:
        for r in (0.1, 0.4):
            rows = [_neuron(cls, r, s) for s in SEEDS]
            out[cls, r] = (np.stack([x[1] for x in rows]), [x[2] for x in rows])
    return out


def test_same_seed_same_image_bit_for_bit_and_the_image_sum_is_the_in_frame_length(grown):
    _, img, truth = _neuron("PC", 0.25, 7)
    _, img2, _ = _neuron("PC", 0.25, 7)
    assert img.dtype == np.float32 and img.shape == (64, 64)
    assert np.array_equal(img, img2)
    _, img3, _ = _neuron("PC", 0.25, 8)
    assert not np.array_equal(img, img3)
    for images, truths in grown.values():
        assert (images >= 0).all()
        for im, t in zip(images, truths):
            assert im.sum(dtype=np.float64) == pytest.approx(t["frac_in_fov"] * t["total_length"], rel=1e-5)
            assert 0.9 < t["frac_in_fov"] <= 1.0 + 1e-6  # float32 pixels


def test_projection_conserves_length_of_a_known_segment():
    # 100 um along x from the soma, 30 um along z: length 104.4 um, all in frame
    a, b = np.array([[0.0, 0.0, 0.0]]), np.array([[100.0, 0.0, 30.0]])
    img, total = project(a, b, Projection())
    assert total == pytest.approx(np.hypot(100, 30)) and img.sum() == pytest.approx(total, rel=1e-5)
    assert img[44, 32:36].sum() == pytest.approx(total, rel=1e-5)  # along the soma's row, to the right
    # beyond the field of view: not in the image, still in the length
    img, total = project(np.array([[0.0, 0.0, 0.0]]), np.array([[0.0, 3000.0, 0.0]]), Projection())
    assert total == pytest.approx(3000.0) and img.sum() == pytest.approx(44.5 * 32, rel=1e-3)


def test_randomness_keeps_length_and_tips_and_shrinks_the_shape(grown):
    from simgan.domains.neuron.observables import image_features
    for cls in CLASSES:
        (_, lo), (_, hi) = grown[cls, 0.1], grown[cls, 0.4]
        for a, b in zip(lo, hi):
            assert b["total_length"] == pytest.approx(a["total_length"], rel=1e-6)
            assert b["n_tips"] == a["n_tips"]
        ext_lo = np.mean([t["max_radial_distance"] for t in lo])
        ext_hi = np.mean([t["max_radial_distance"] for t in hi])
        assert ext_hi < 0.85 * ext_lo, cls
        f_lo, f_hi = (image_features(grown[cls, r][0], Projection()) for r in (0.1, 0.4))
        assert f_hi["max_extent"].mean() < f_lo["max_extent"].mean()


def test_class_ordering_in_length_and_the_interneuron_stays_small(grown):
    length = {c: np.mean([t["total_length"] for r in (0.1, 0.4) for t in grown[c, r][1]]) for c in CLASSES}
    assert length["IN"] < length["L5_TPC"] < length["PC"]
    assert 3000 < length["IN"] < 8000 and 10000 < length["PC"] < 30000
    assert max(t["max_radial_distance"] for r in (0.1, 0.4) for t in grown["IN", r][1]) < 450
    # apical dendrite up: the pyramidal cells' length lies above the soma, the interneuron is unrotated
    from simgan.domains.neuron.observables import image_features
    for c in ("PC", "L5_TPC"):
        assert (image_features(grown[c, 0.1][0], Projection())["centroid_dy"] > 50).all()


def test_shards_merge_into_the_events_of_one_run(tmp_path, capsys):
    from pipeline.cli import main
    over = ["simulate.events=6", "simulate.workers=1", "simulate.classes=[IN]"]
    one = tmp_path / "one.h5"
    assert main(["simulate", "-c", str(NEURON), "-q", "--out", str(one), *over]) == 0
    for i in range(2):
        assert main(["simulate", "-c", str(NEURON), "-q", "--out", str(tmp_path / f"s{i}.h5"), "--shard-index",
                     str(i), "--shard-count", "2", *over]) == 0
    assert main(["merge", str(tmp_path / "s1.h5"), str(tmp_path / "s0.h5"), "--out", str(tmp_path / "m.h5")]) == 0
    a, b = nio.read(one), nio.read(tmp_path / "m.h5")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.seed, b.seed)
    assert np.array_equal(a.trees.points, b.trees.points) and np.array_equal(a.trees.structure, b.trees.structure)
    # the same shards as a job array's, merged into the run's simulate stage (with its manifest)
    shard_dir = tmp_path / "runs" / "neuron_quickstart" / "simulate" / "shards"
    shard_dir.mkdir(parents=True)
    for i in range(2):
        (tmp_path / f"s{i}.h5").rename(shard_dir / f"shard_{i}.h5")
    assert main(["merge", "--stage", "simulate", "-c", str(NEURON), f"runs_dir={tmp_path / 'runs'}", *over]) == 0
    staged = tmp_path / "runs" / "neuron_quickstart" / "simulate"
    assert np.array_equal(nio.read(staged / "showers.h5").images, a.images) and (staged / "manifest.json").is_file()
    # a shard of another run (another seed) is refused, and the stage writes nothing
    other = tmp_path / "runs2" / "neuron_quickstart" / "simulate"
    (other / "shards").mkdir(parents=True)
    assert main(["simulate", "-c", str(NEURON), "-q", "--out", str(other / "shards" / "shard_0.h5"), "--shard-index",
                 "0", "--shard-count", "2", "seed=1", *over]) == 0
    capsys.readouterr()
    assert main(["merge", "--stage", "simulate", "-c", str(NEURON), f"runs_dir={tmp_path / 'runs2'}", *over]) == 2
    assert "shard_0.h5: a shard of another run (seed 1" in capsys.readouterr().err
    assert not (other / "showers.h5").exists() and not (other / "manifest.json").exists()
    assert np.array_equal(a.randomness, b.randomness) and (a.cell_class == 0).all()
    with h5py.File(one) as f:
        assert f.attrs["domain"] == "neuron" and list(f["conditions/cell_class"].attrs["class_names"]) == list(CLASSES)
        assert json.loads(f.attrs["inputs_sha256"])["IN_params.json"].startswith("21bdd9")
        assert "neurots" in json.loads(f.attrs["versions"]) and list(f.attrs["soma_pixel"]) == [44, 32]
        assert set(f["truth"]) == {"total_length", "n_tips", "n_bifurcations", "max_radial_distance", "frac_in_fov"}


def test_the_fly_neurons_navis_ships_measure_as_published(tmp_path):
    """hemibrain DA1 projection neurons (units 8 nm): the measuring code on real traced neurons."""
    navis = pytest.importorskip("navis")
    nl = navis.example_neurons()
    rows = ["file,cell_class"]
    for i, n in enumerate(nl):
        n = navis.heal_skeleton(n)  # one tree (a tracing may come in fragments)
        if n.soma is not None:  # measured from the soma where the tracing marks one
            n = navis.reroot_skeleton(n, n.soma)
        nodes = n.nodes  # SWC by hand: the root a one-point soma (type 1), the rest dendrite (type 3)
        with open(tmp_path / f"n{i}.swc", "w") as fh:
            for nid, x, y, z, r, parent in nodes[["node_id", "x", "y", "z", "radius", "parent_id"]].itertuples(
                    index=False):
                fh.write(f"{nid} {1 if parent < 0 else 3} {x} {y} {z} {r} {parent}\n")
        rows.append(f"n{i}.swc,IN")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ni = nio.read_swc_dir(tmp_path, tmp_path / "labels.csv", scale_um=0.008)
    assert len(ni) == 5 and ni.images.shape == (5, 64, 64)
    length_mm = ni.truth["total_length"] / 1000
    assert ((length_mm > 2.0) & (length_mm < 2.5)).all(), length_mm
    assert ((ni.truth["n_tips"] >= 600) & (ni.truth["n_tips"] <= 780)).all(), ni.truth["n_tips"]
    assert ((ni.truth["max_radial_distance"] > 170) & (ni.truth["max_radial_distance"] < 250)).all()
    np.testing.assert_allclose(ni.images.sum((1, 2)), ni.truth["total_length"] * ni.truth["frac_in_fov"], rtol=1e-5)


def _images(n=40, size=64):
    rng = np.random.default_rng(0)
    im = (rng.random((n, size, size)) < 0.05) * rng.exponential(20, (n, size, size))
    return nio.NeuronImages(im.astype(np.float32), rng.integers(0, 3, n), rng.uniform(0.1, 0.4, n).astype(np.float32))


@pytest.mark.parametrize("defect, message", [
    ("negative", "dataset 'images' row 3: negative pixel"),
    ("nan", "dataset 'images' row 3: NaN or infinite pixels"),
    ("size", "holds 32 x 32 images, expected 64 x 64"),
    ("size_no_projection", "dataset 'images' holds 32 x 32 images, but domain.size is 64"),
    ("label", "'conditions/cell_class' attribute class_names has \\['GRANULE'\\]"),
    ("empty", "dataset 'images' row 3: an empty image \\(2 of 40 hold no neurite\\)"),
])
def test_bad_image_files_stop_prepare_with_nothing_written(tmp_path, capsys, defect, message):
    from pipeline.cli import main
    ni = _images(size=32 if defect.startswith("size") else 64)
    path = nio.write(tmp_path / "in.h5", ni)
    with h5py.File(path, "a") as f:
        if defect == "negative":
            f["images"][3, 10, 10] = -2.0
        elif defect == "nan":
            f["images"][3, 10, 10] = np.nan
        elif defect == "size":
            f.attrs["projection"] = json.dumps(Projection().to_dict())
        elif defect == "label":
            f["conditions/cell_class"].attrs["class_names"] = ["IN", "PC", "GRANULE"]
        elif defect == "empty":
            f["images"][3] = 0.0
            f["images"][7] = 0.0
    assert main(["run", "-c", str(NEURON), "-q", f"runs_dir={tmp_path / 'runs'}", f"prepare.input={path}",
                 "--until", "prepare"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and __import__("re").search(message, err), err
    assert not (tmp_path / "runs" / "neuron_quickstart" / "prepare" / "train.h5").exists()


def test_bad_swc_folders_name_the_file_and_write_nothing(tmp_path, capsys):
    from pipeline.cli import main
    (tmp_path / "empty.swc").write_text("")
    (tmp_path / "labels.csv").write_text("file,cell_class\nempty.swc,IN\n")
    out = tmp_path / "out.h5"
    assert main(["convert", str(tmp_path), "--format", "swc", "--labels", str(tmp_path / "labels.csv"),
                 "--out", str(out)]) == 2
    assert "empty.swc: empty morphology file" in capsys.readouterr().err and not out.exists()
    (tmp_path / "labels.csv").write_text("file,cell_class\nempty.swc,GRANULE\n")
    assert main(["convert", str(tmp_path), "--format", "swc", "--labels", str(tmp_path / "labels.csv"),
                 "--out", str(out)]) == 2
    assert "line 2: cell_class 'GRANULE' unknown" in capsys.readouterr().err and not out.exists()
    # morphio's reasons, without its terminal colours; the labels CSV's own faults by line
    (tmp_path / "garbage.swc").write_text("garbage here\n1 2 3\n")
    (tmp_path / "orphan.swc").write_text("1 1 0 0 0 5 -1\n2 3 0 10 0 1 1\n3 3 0 20 0 1 7\n")
    for labels, msg in (("file,cell_class\ngarbage.swc,IN\n", "garbage.swc: not a readable morphology: line 1: "
                                                                "Unable to parse this line (RawDataError)"),
                        ("file,cell_class\norphan.swc,IN\n", "orphan.swc: not a readable morphology: line 3: Sample id: 3 "
                                                               "refers to non-existant parent ID: 7"),
                        ("file,cell_class,randomness\n", "a header (file, cell_class, randomness) and no rows"),
                        ("", "expected a header with columns file, cell_class (and optionally randomness): the file is "
                             "empty"),
                        ("file,cell_class,randomness\ngarbage.swc,IN,7\n", "labels.csv line 2: randomness 7 is outside "
                                                                            "[0, 1]")):
        (tmp_path / "labels.csv").write_text(labels)
        assert main(["convert", str(tmp_path), "--format", "swc", "--labels", str(tmp_path / "labels.csv"),
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert msg in err and "\x1b[" not in err, err
        assert not out.exists()


def test_a_real_swc_folder_converts_like_the_simulator(tmp_path, capsys):
    """A NeuroTS neuron written as SWC and read back rasterises to the simulator's image."""
    from pipeline.cli import main
    morph = grow("L5_TPC", 0.2, 3)
    morph.write(str(tmp_path / "cell.swc"))
    (tmp_path / "labels.csv").write_text("file,cell_class,randomness\ncell.swc,L5_TPC,0.2\n")
    assert main(["convert", str(tmp_path), "--format", "swc", "--labels", str(tmp_path / "labels.csv"),
                 "--out", str(tmp_path / "cells.h5")]) == 0
    ni = nio.read(tmp_path / "cells.h5")
    _, img, truth = _neuron("L5_TPC", 0.2, 3)
    assert ni.cell_class.tolist() == [2] and ni.randomness[0] == pytest.approx(0.2)
    # SWC stores float32 points and a soma outline: lengths agree to 0.5%
    assert ni.truth["total_length"][0] == pytest.approx(truth["total_length"], rel=5e-3)
    assert ni.images[0].sum() == pytest.approx(img.sum(), rel=5e-3)
    # the wrong units, a file labelled twice, an output onto a morphology of the folder: refused by name
    labels = str(tmp_path / "labels.csv")
    for scale, says in (("1000", "with --scale-um 1000 only 0.0"), ("0.001", "reaches only 1.")):
        assert main(["convert", str(tmp_path), "--format", "swc", "--labels", labels, "--scale-um", scale,
                     "--out", str(tmp_path / "x.h5")]) == 2
        assert says in capsys.readouterr().err and not (tmp_path / "x.h5").exists()
    (tmp_path / "labels.csv").write_text("file,cell_class\ncell.swc,L5_TPC\ncell.swc,PC\n")
    assert main(["convert", str(tmp_path), "--format", "swc", "--labels", labels, "--out", str(tmp_path / "x.h5")]) == 2
    assert "line 3: cell.swc is labelled again (first on line 2)" in capsys.readouterr().err
    before = (tmp_path / "cell.swc").read_bytes()
    assert main(["convert", str(tmp_path), "--format", "swc", "--labels", labels, "--out",
                 str(tmp_path / "cell.swc")]) == 2
    assert "is a file inside the input folder" in capsys.readouterr().err
    assert (tmp_path / "cell.swc").read_bytes() == before


# (one validation draw: the verdict over draws is the same code in every domain, run by the
# calorimeter, air-shower and toy chains)
NEURON_TINY = ["simulate.events=80", "train.steps=30", "train.val_every=15", "train.checkpoint_every=15",
               "train.val_events=18", "train.batch_size=32", "validate.classifier_seeds=1",
               "validate.predictor_steps=60", "validate.draws=1"]
# a gate 24 held-out neurons can judge: the per-class checks have no floor at this size (too few
# of a class in the floor sample), so they are left out
OPEN_GATE = ["validate.gate.auc_max=1.0", "validate.gate.min_events=20", "validate.gate.separation_mean_max=1.0",
             "validate.gate.length_mean_deviation_max=null", "validate.gate.extent_mean_deviation_max=null",
             "validate.gate.class_accuracy_drop_max=1.0"]


@pytest.mark.slow
def test_neuron_chain_registers_and_a_consumer_predicts_from_class_names(tmp_path):
    import mlflow
    import pandas as pd

    from pipeline.runner import run_chain
    from simgan.checkpoint import load_checkpoint
    from simgan.domains import load_config
    cfg = load_config(NEURON, [f"runs_dir={tmp_path}", f"register.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                               "register.name=neuron-tiny", "prepare.fractions=[0.5,0.2,0.3]", *NEURON_TINY,
                               *OPEN_GATE])
    assert run_chain(cfg, progress=False) == 0
    run = cfg.run_dir
    m = json.loads((run / "validate" / "metrics.json").read_text())
    assert m["domain"] == "neuron" and m["gate"]["pass"] and m["n_reference"] == 24
    assert set(m["per_class"]) <= set(CLASSES) and "class_accuracy" in m["predictor"]["reference"]
    assert (run / "validate" / "images.png").is_file() and (run / "validate" / "report.html").is_file()
    ckpt = load_checkpoint(run / "train" / "model.pt")
    assert ckpt["schema"]["conditions"] == ["cell_class", "randomness"] and ckpt["model_args"]["domain"] == "neuron"
    mlflow.set_tracking_uri(cfg.register.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/neuron-tiny@champion")
    frame = pd.DataFrame({"cell_class": ["IN", "PC", "L5_TPC", "PC"], "randomness": [0.1, 0.2, 0.3, 0.4]})
    out = model.predict(frame, params={"seed": 3})
    assert out.shape == (4, 64, 64) and (out >= 0).all() and np.isfinite(out).all()
    np.testing.assert_array_equal(model.predict(frame, params={"seed": 3}), out)
    with pytest.raises(Exception, match="GRANULE.*unknown"):
        model.predict(frame.assign(cell_class=["IN", "GRANULE", "PC", "PC"]))
    with pytest.raises(Exception, match="randomness"):
        model.predict(frame.drop(columns=["randomness"]))
    # class indices, which the domain takes, pass the signature too; nonsense is named
    np.testing.assert_array_equal(model.predict(frame.assign(cell_class=[0, 1, 2, 1]), params={"seed": 3}), out)
    from mlflow.exceptions import MlflowException
    for bad, says in ((frame.assign(randomness=[0.1, np.nan, 0.3, 0.4]), "column 'randomness' row 1: nan"),
                      (frame.assign(randomness=[0.1, 0.2, 0.3, 0.9]), "'randomness' row 3: 0.9 is outside the training"),
                      (frame.assign(cell_class=[0, 7, 1, 1]), "row 1: cell_class 7")):
        with pytest.raises(MlflowException, match=says):
            model.predict(bad)
    # the GAN twin (configs/experiment/neuron_quickstart_gan.yaml), shrunk, on the same NeuroTS cells
    gan = load_config(NEURON.parent / "neuron_quickstart_gan.yaml",
                      [f"runs_dir={tmp_path}", f"register.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                       f"prepare.input={run / 'simulate' / 'showers.h5'}", "prepare.fractions=[0.5,0.2,0.3]",
                       *[o for o in NEURON_TINY if not o.startswith("simulate.")], "train.steps=6",
                       "model.width=8", "model.critic_width=8", "model.n_critic=2", *OPEN_GATE])
    assert gan.model.family == "neuron_gan"
    assert load_config(NEURON.parent / "neuron_quickstart_gan.yaml").validate.gate == load_config(NEURON).validate.gate
    assert run_chain(gan, progress=False) == 0
    g = json.loads((gan.run_dir / "validate" / "metrics.json").read_text())
    assert g["domain"] == "neuron" and g["n_reference"] == 24 and "auc" in g["gate"]["checks"]
    reg = json.loads((gan.run_dir / "register" / "registered.json").read_text())
    assert reg["name"] == "simgan-neuron-quickstart-gan" and reg["gate"] == ("pass" if g["gate"]["pass"] else "fail")


@pytest.mark.parametrize("family", ["neuron_gan", "neuron_gan_hybrid", "neuron_vae", "neuron_vae_flow"])
def test_image_models_train_through_the_shared_trainer_and_sample_by_class(tmp_path, family):
    import torch

    from simgan.domains import get_domain, load_config, model_from_checkpoint
    from simgan.train.trainer import Trainer
    ni = _images(48)
    ni.attrs = nio.projection_attrs(Projection())
    nio.write(tmp_path / "train.h5", ni)
    nio.write(tmp_path / "val.h5", ni.subset(np.arange(24)))
    flow, hybrid = family.endswith("_flow"), family.endswith("_hybrid")
    family = family.removesuffix("_flow").removesuffix("_hybrid")
    cfg = load_config(NEURON, [f"runs_dir={tmp_path}", f"model={family}", "model.width=8", "train.steps=6",
                               "train.batch_size=8", "train.log_every=2", "train.val_every=3", "train.val_events=24",
                               "train.checkpoint_every=3", "train.mlflow=false", "train.progress=false",
                               *(["model.critic_width=8", "model.n_critic=2"] if family == "neuron_gan" else []),
                               *(["model.latent_sampler=flow", "model.flow_steps=30"] if flow else []),
                               *(["model.likelihood_weight=1", "model.kl_warmup_steps=2"] if hybrid else [])])
    info = Trainer(cfg, get_domain(cfg.domain.name), tmp_path / "train.h5", tmp_path / "val.h5", tmp_path / "train", progress=False).fit()
    assert info["steps"] == 6 and info["complete"]
    rows = [json.loads(x) for x in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    logged = {"loss_d", "loss_g", "gp"} if family == "neuron_gan" else {"recon", "kl"}
    assert logged | ({"likelihood"} if hybrid else set()) | {"val_sep_mean"} <= set().union(*rows)
    assert all(np.isfinite(r[k]) for r in rows for k in logged & set(r))
    model, ckpt = model_from_checkpoint(tmp_path / "train" / "model.pt")
    assert ckpt["schema"]["sample_shape"] == [64, 64] and ckpt["condition_ranges"]["randomness"][0] >= 0.1
    c = torch.tensor([[0, 0.2], [1, 0.2], [2, 0.3]])
    g = torch.Generator().manual_seed(1)
    out = model.sample(c, None, g)
    assert out.shape == (3, 64, 64) and (out >= 0).all()
    assert not torch.equal(out[0], out[1])  # the class reaches the generator
    if hybrid:  # the VAE's heads and its encoder; the critic's fake is the drawn image with the hits' gradient
        assert model.hybrid and model.encoder is not None
        cond = torch.nn.functional.one_hot(torch.tensor([0, 1, 2]), 3).float()
        cond = torch.cat([cond, torch.zeros(3, 1)], 1)[:, :, None, None].expand(-1, -1, 64, 64)
        fake = model.fake(cond, torch.Generator().manual_seed(2))
        assert fake.shape == (3, 1, 64, 64) and fake.requires_grad and (fake.detach() >= 0).all()
        fake.sum().backward()
        grads = [p.grad for p in model.generator.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    if flow:  # fitted after training, stored in model.pt; its codes differ from the prior's, a seed repeats them
        assert info["calibration"]["latent_flow_steps"] == 30 and bool(model.flow_fitted)
        z = model.draw_codes(c, torch.Generator().manual_seed(5))
        assert torch.equal(z, model.draw_codes(c, torch.Generator().manual_seed(5)))
        assert not torch.equal(z, torch.randn(3, model.cfg.latent_dim, generator=torch.Generator().manual_seed(5)))
    if family == "neuron_gan":  # the export: one ONNX graph of the conditions and the noise
        from simgan.export import export_model
        side = export_model(get_domain("neuron").export_graph(model, ckpt), "onnx", tmp_path / "export",
                            tmp_path / "train" / "model.pt", "neuron", family, {"gate": "not validated"}, "test")
        assert side["round_trip"]["max_relative_difference_all"] <= 1e-4
        assert [p["name"] for p in side["inputs"]] == (["conditions", "z", "hit_uniform", "pixel_normal"] if hybrid
                                                       else ["conditions", "z"])
        # images through onnxruntime from the folder alone, for a file's classes and randomness
        from pipeline.cli import main
        assert main(["generate", "--export", str(tmp_path / "export"), "--energies-from", str(tmp_path / "val.h5"),
                     "--out", str(tmp_path / "gen.h5"), "--batch-size", "10"]) == 0
        gen, val = nio.read(tmp_path / "gen.h5"), nio.read(tmp_path / "val.h5")
        np.testing.assert_array_equal(gen.cell_class, val.cell_class)
        assert gen.images.shape == val.images.shape and (gen.images >= 0).all() and gen.images.sum() > 0
    if flow:  # the graph's module holds the flow: with sample's draws it returns sample's images (its ONNX
        # export works too, but tracing the flow's autoregressive inverse takes about two minutes)
        from simgan.domains.neuron.models import NeuronSampler
        g = torch.Generator().manual_seed(4)
        draws = (torch.randn(3, model.cfg.latent_dim, generator=g), torch.rand(3, 64, 64, generator=g),
                 torch.randn(3, 64, 64, generator=g))
        assert torch.equal(NeuronSampler(model)(c, *draws), model.sample(c, None, torch.Generator().manual_seed(4)))


def test_a_calorimeter_setting_in_a_neuron_config_is_refused_by_name():
    """generate.ablation=true was accepted for neurons: the generate stage then listed an output
    it never wrote, and validate stopped on a missing input."""
    from simgan.domains import load_config
    with pytest.raises(SimganError, match="key 'generate.ablation': a setting of the calorimeter domain; the neuron "
                                          "domain has no such key"):
        load_config(NEURON, ["generate.ablation=true"])
    from pipeline import generate
    assert set(generate.outputs(load_config(NEURON))) == {"showers", "timing"}
