import subprocess

from pipeline.cli import main
from tests.conftest import QUICKSTART


def test_rendered_slurm_scripts_pass_bash_n(tmp_path):
    assert main(["workflow", "-c", str(QUICKSTART), "--out", str(tmp_path), "--nodes", "2", "simulate.events=1000",
                 "simulate.shard_events=100"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["generate_array.sbatch", "generate_merge.sbatch", "merge.sbatch", "register.sbatch",
                     "simulate_array.sbatch", "submit.sh", "train.sbatch", "validate.sbatch"]
    for p in tmp_path.iterdir():
        r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
        assert r.returncode == 0, (p.name, r.stderr)
    sim = (tmp_path / "simulate_array.sbatch").read_text()
    assert "#SBATCH --array=0-9" in sim and "--shard-count 10" in sim and str(QUICKSTART) in sim
    assert '${SLURM_ARRAY_TASK_ID}' in sim
    train = (tmp_path / "train.sbatch").read_text()
    assert "--nnodes=2" in train and "pipeline.cli train" in train
    assert "afterok" in (tmp_path / "submit.sh").read_text()
    gen = (tmp_path / "generate_array.sbatch").read_text()
    assert "#SBATCH --array=0-3" in gen and "--shard-count 4" in gen and "--seed 42" in gen
    assert "generate/shards/shard_*.h5" in (tmp_path / "generate_merge.sbatch").read_text()


def test_workflow_bad_key_is_refused(tmp_path, capsys):
    assert main(["workflow", "-c", str(QUICKSTART), "--out", str(tmp_path / "w"), "simulate.shards=3"]) == 2
    assert "simulate.shards" in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_prepare_missing_input_and_merge_of_non_shard(tmp_path, capsys):
    missing = tmp_path / "nope.h5"
    assert main(["prepare", "-c", str(QUICKSTART), "-q", f"runs_dir={tmp_path}", f"prepare.input={missing}"]) == 2
    assert "nope.h5" in capsys.readouterr().err
    assert not (tmp_path / "quickstart" / "prepare").exists()
    import numpy as np

    from simgan.data import calochallenge as cc
    from simgan.data.binning import reference_binning
    plain = cc.write(tmp_path / "plain.h5", cc.ShowerData(np.array([1000.0]), np.zeros((1, 6480), np.float32),
                                                          reference_binning()))
    out = tmp_path / "merged.h5"
    assert main(["merge", str(plain), "--out", str(out)]) == 2
    assert "not a shard file" in capsys.readouterr().err and not out.exists()
