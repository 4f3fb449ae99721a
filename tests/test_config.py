import pytest

from pipeline.cli import main
from simgan.config import load_config
from simgan.errors import SimganError
from tests.conftest import QUICKSTART


def test_quickstart_composes_groups_and_overrides():
    cfg = load_config(QUICKSTART, ["train.steps=7", "model.latent_dim=8", "model.energy.steps=5"])
    assert cfg.model.family == "vae" and cfg.model.output == "layers"
    assert cfg.train.steps == 7 and cfg.model.latent_dim == 8 and cfg.model.energy.steps == 5
    assert cfg.domain.geometry == "reference"
    gan = load_config(QUICKSTART, ["model=wgan_gp"])
    assert gan.model.family == "gan" and gan.model.loss == "wgan_gp" and gan.model.output == "layers"


def test_layered_model_config_errors_name_the_key():
    with pytest.raises(SimganError, match="model.energy.order"):
        load_config(QUICKSTART, ["model.energy.order=sideways"])
    with pytest.raises(SimganError, match="model.energy.stepz"):
        load_config(QUICKSTART, ["model.energy.stepz=3"])


@pytest.mark.parametrize("override, key", [("train.stepz=3", "train.stepz"), ("model.foo=1", "model.foo"),
                                           ("train.steps=abc", "train.steps"), ("bogus=1", "bogus")])
def test_bad_keys_and_types_name_file_and_key(override, key):
    with pytest.raises(SimganError) as exc:
        load_config(QUICKSTART, [override])
    assert str(QUICKSTART) in str(exc.value) and f"'{key}'" in str(exc.value)


def test_unknown_key_in_yaml_file(tmp_path):
    (tmp_path / "domain").mkdir()
    (tmp_path / "experiment").mkdir()
    (tmp_path / "domain" / "calorimeter.yaml").write_text("name: calorimeter\n")
    exp = tmp_path / "experiment" / "x.yaml"
    exp.write_text("defaults: {domain: calorimeter}\nname: x\ntrain: {stepps: 3}\n")
    with pytest.raises(SimganError, match=r"x.yaml: key 'train.stepps': unknown key"):
        load_config(exp)


def test_cli_reports_config_error_and_exits_nonzero(tmp_path, capsys):
    out = tmp_path / "s.h5"
    rc = main(["simulate", "-c", str(QUICKSTART), "--events", "5", "--out", str(out), "simulate.cut_mmm=1"])
    assert rc == 2
    assert "simulate.cut_mmm" in capsys.readouterr().err
    assert not out.exists()
