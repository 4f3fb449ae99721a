import pytest

from pipeline.cli import main
from simgan.domains import load_config
from simgan.errors import SimganError
from tests.conftest import QUICKSTART


def test_quickstart_composes_groups_and_overrides():
    cfg = load_config(QUICKSTART, ["train.steps=7", "model.latent_dim=8", "model.energy.steps=5"])
    assert cfg.model.family == "vae" and cfg.model.output == "layers"
    assert cfg.train.steps == 7 and cfg.model.latent_dim == 8 and cfg.model.energy.steps == 5
    assert cfg.domain.geometry == "reference"
    gan = load_config(QUICKSTART, ["model=calorimeter/wgan_gp"])
    assert gan.model.family == "gan" and gan.model.loss == "wgan_gp" and gan.model.output == "layers"


def test_old_model_names_work_for_one_release_with_a_deprecation_message(tmp_path, capsys):
    """configs/model/<domain>/<family>.yaml: `model=wgan_gp` (the name before the groups mirrored
    the packages) finds the domain's file and says what to write instead."""
    old = load_config(QUICKSTART, ["model=wgan_gp"])
    err = capsys.readouterr().err
    assert "simgan: deprecated: model=wgan_gp" in err and "is now model=calorimeter/wgan_gp" in err
    new = load_config(QUICKSTART, ["model=calorimeter/wgan_gp"])
    assert "deprecated" not in capsys.readouterr().err
    assert old.model_dump() == new.model_dump()
    exp = tmp_path / "old.yaml"  # an experiment file of the old layout, read from the shipped groups
    exp.write_text("defaults: {domain: airshower, model: footprint_gan}\nname: old\n")
    assert load_config(exp).model.family == "footprint_gan"
    assert "is now model=airshower/footprint_gan" in capsys.readouterr().err
    with pytest.raises(SimganError, match="key 'defaults.model': no config .*model/neuron_vae.yaml"):
        load_config(QUICKSTART, ["model=neuron_vae"])  # another domain's family is not found by its old name


def test_layered_model_config_errors_name_the_key():
    with pytest.raises(SimganError, match="model.energy.order"):
        load_config(QUICKSTART, ["model.energy.order=sideways"])
    with pytest.raises(SimganError, match="model.energy.stepz"):
        load_config(QUICKSTART, ["model.energy.stepz=3"])


@pytest.mark.parametrize("override, key", [("train.stepz=3", "train.stepz"), ("model.foo=1", "model.foo"),
                                           ("train.steps=abc", "train.steps"), ("bogus=1", "bogus"),
                                           ("train.steps=true", "train.steps"),  # pydantic alone: 1
                                           ("model.energy.lr=false", "model.energy.lr"),
                                           ("validate.gate.auc_high_max=true", "validate.gate.auc_high_max"),
                                           ("domain.threshold_mev=-1", "domain.threshold_mev"), ("seed=-1", "seed"),
                                           ("validate.gate.min_events=0", "validate.gate.min_events")])
def test_bad_keys_and_types_name_file_and_key(override, key):
    with pytest.raises(SimganError) as exc:
        load_config(QUICKSTART, [override])
    assert str(QUICKSTART) in str(exc.value) and f"'{key}'" in str(exc.value)


def test_unknown_key_in_yaml_file(tmp_path):
    (tmp_path / "domain").mkdir()
    (tmp_path / "experiment").mkdir()
    (tmp_path / "domain" / "calorimeter.yaml").write_text("name: calorimeter\n")
    exp = tmp_path / "experiment" / "x.yaml"
    exp.write_text("defaults: {domain: calorimeter}\nname: x\nmodel: {family: vae}\ntrain: {stepps: 3}\n")
    with pytest.raises(SimganError, match=r"x.yaml: key 'train.stepps': unknown key"):
        load_config(exp)


def test_cli_reports_config_error_and_exits_nonzero(tmp_path, capsys):
    out = tmp_path / "s.h5"
    rc = main(["simulate", "-c", str(QUICKSTART), "--events", "5", "--out", str(out), "simulate.cut_mmm=1"])
    assert rc == 2
    assert "simulate.cut_mmm" in capsys.readouterr().err
    assert not out.exists()


def test_convert_names_the_formats_the_domains_read(tmp_path, capsys):
    """--format is no fixed list of the command line: the formats come from the domains, and an
    unknown one is refused by name, with nothing written."""
    src = tmp_path / "in.h5"
    src.write_bytes(b"")
    assert main(["convert", str(src), "--out", str(tmp_path / "o.h5"), "--format", "gdml"]) == 2
    err = capsys.readouterr().err
    assert "--format 'gdml': expected one of" in err and "calogan" in err and "swc" in err
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("argv, says", [
    (["simulate", "--events", "0"], "argument --events: expected an integer >= 1, got 0"),
    (["simulate", "--events", "-5"], "argument --events: expected an integer >= 1, got -5"),
    (["simulate", "--events", "5", "--shard-index", "1"], "give both --shard-index and --shard-count"),
    (["simulate", "--events", "5", "--shard-index", "2", "--shard-count", "2"], "expected 0 <= index < --shard-count 2"),
    (["generate", "--checkpoint", "m.pt", "--events", "3", "--energy-range", "1", "inf"],
     "argument --energy-range: expected a finite number > 0, got inf"),
    (["generate", "--checkpoint", "m.pt", "--events", "3", "--energy-range", "1", "2", "--compare-geant4", "-1"],
     "argument --compare-geant4: expected an integer >= 0"),
    (["generate", "--checkpoint", "m.pt", "--events", "3", "--energy-range", "1", "2", "--seed", "-3"],
     "argument --seed: expected an integer >= 0"),
    (["workflow", "--nodes", "0"], "argument --nodes: expected an integer >= 1, got 0"),
    (["workflow", "--gpus-per-node", "-2"], "argument --gpus-per-node: expected an integer >= 0, got -2"),
    (["run", "--from", "register", "--until", "prepare"], "--from register comes after --until prepare"),
])
def test_cli_refuses_arguments_that_would_run_something_else(tmp_path, capsys, argv, says):
    """Exit 2 with the option named, before any work, where the command used to run the whole
    set, nothing, or a wrong count and exit 0."""
    out = tmp_path / "o.h5"
    if argv[0] in ("simulate", "workflow", "run"):
        argv = [argv[0], "-c", str(QUICKSTART), *argv[1:]] + (["--out", str(out)] if argv[0] != "run" else [])
    else:
        argv = [*argv, "--out", str(out)]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    assert rc == 2 and says in capsys.readouterr().err
    assert not out.exists()


def test_device_and_output_format_are_checked(tmp_path, capsys):
    with pytest.raises(SimganError, match=r"key 'train.device': String should match pattern"):
        load_config(QUICKSTART, ["train.device=tpu"])
    from simgan.checkpoint import resolve_device
    with pytest.raises(SimganError, match="device 'tpu': expected auto, cpu, cuda, cuda:N or mps"):
        resolve_device("tpu")
    assert main(["generate", "--checkpoint", "m.pt", "--events", "2", "--energy-range", "1", "2", "--format", "root",
                 "--out", str(tmp_path / "x.h5")]) == 2
    assert "--format root needs a .root name" in capsys.readouterr().err


def test_broken_checkpoints_and_unknown_geometry_say_what_is_wrong(tmp_path):
    from simgan.checkpoint import load_checkpoint
    from simgan.domains.calorimeter.data.binning import load_binning
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(SimganError, match="empty.pt: checkpoint is empty"):
        load_checkpoint(empty)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(SimganError, match=r"torn.pt: not a readable simgan checkpoint \(.+\)"):
        load_checkpoint(torn)
    with pytest.raises(SimganError, match=r"nope: binning XML not found \(domain.geometry or --binning"):
        load_binning("nope")


@pytest.mark.parametrize("twin", ["quickstart_gan", "airshower_quickstart_gan", "neuron_quickstart_gan",
                                  "airshower50k_gan", "neuron15k_gan"])
def test_gan_twins_keep_their_quickstarts_data_budget_and_gate(twin):
    """A twin `extends` its quickstart (or benchmark): the same data and gate (the training may
    differ: a GAN's critic steps cost more per step). One stated exception: the air-shower
    twins keep footprints without traces (their critic on the traces costs twice the
    quickstart's minutes)."""
    base = load_config(QUICKSTART.parent / f"{twin.removesuffix('_gan')}.yaml")
    gan = load_config(QUICKSTART.parent / f"{twin}.yaml")
    assert "gan" in gan.model.family and "vae" in base.model.family
    assert gan.name == twin and gan.register.name == base.register.name + "-gan"
    b, g = base.model_dump(), gan.model_dump()
    if twin.startswith("airshower"):  # footprints without traces, of protons: its gate has no trace limits
        assert not g["simulate"]["traces"] and b["simulate"]["traces"]
        for key, value in (("traces", False), ("trace_components", False), ("mass_A", 1)):
            b["simulate"][key] = value
        for key in ("rise_1000_deviation_max", "trace_shape_deviation_max", "rise_mass_slope_deviation_max"):
            # (the quickstart does not check the mass slope either: uninformative at its size)
            assert g["validate"]["gate"][key] is None
            assert b["validate"]["gate"][key] is not None or key == "rise_mass_slope_deviation_max"
            b["validate"]["gate"][key] = None
    for key in ("domain", "simulate", "prepare", "generate", "validate", "seed"):
        assert g[key] == b[key], key


def test_a_twin_of_another_model_does_not_inherit_the_base_model_settings(tmp_path):
    """neuron15k.yaml's model section (beta, latent_sampler) is the VAE's: its GAN twin starts
    from the GAN's group file; a twin that keeps the model keeps the base's settings."""
    gan = load_config(QUICKSTART.parent / "neuron15k_gan.yaml")
    assert gan.model.beta == 1.0 and gan.model.likelihood_weight == 1.0
    (tmp_path / "same.yaml").write_text(f"extends: {QUICKSTART.parent / 'neuron15k.yaml'}\nname: same\n"
                                        "train:\n  steps: 10\n")
    same = load_config(tmp_path / "same.yaml")
    assert same.model.beta == 0.05 and same.model.latent_sampler == "flow" and same.train.steps == 10


def test_extends_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(SimganError, match=r"a.yaml: key 'extends': b.yaml leads back to a file that extends it \(a cycle\)"):
        load_config(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\nname: c\n")
    with pytest.raises(SimganError, match=r"c.yaml: key 'extends': no experiment file .*missing.yaml"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [a.yaml]\nname: d\n")
    with pytest.raises(SimganError, match=r"d.yaml: key 'extends': expected the name of an experiment file"):
        load_config(tmp_path / "d.yaml")


def test_usable_cpus_follow_affinity_slurm_quota_and_torchrun(tmp_path):
    from simgan.cpus import limit_threads, usable_cpus

    four = range(4)
    assert usable_cpus({}, four, tmp_path) == 4
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "2"}, four, tmp_path) == 2
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "16"}, four, tmp_path) == 4  # the mask is smaller
    assert usable_cpus({"LOCAL_WORLD_SIZE": "2"}, four, tmp_path) == 2  # torchrun: two processes share them
    assert usable_cpus({"LOCAL_WORLD_SIZE": "8"}, four, tmp_path) == 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a container's quota: 1.5 CPUs
    assert usable_cpus({}, four, tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus({}, four, tmp_path) == 4
    with pytest.raises(SimganError, match="SLURM_CPUS_PER_TASK='two': expected a whole number"):
        usable_cpus({"SLURM_CPUS_PER_TASK": "two"}, four, tmp_path)
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime its boosted trees use)
    import torch
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    try:
        assert limit_threads(1) == 1 and torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    finally:
        limit_threads(before)
