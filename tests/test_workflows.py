import subprocess

from pipeline.cli import main
from tests.conftest import QUICKSTART


def test_rendered_slurm_scripts_pass_bash_n(tmp_path):
    assert main(["workflow", "-c", str(QUICKSTART), "--out", str(tmp_path), "--nodes", "2", "simulate.events=1000",
                 "simulate.shard_events=100"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["generate.sbatch", "merge.sbatch", "register.sbatch", "simulate_array.sbatch", "submit.sh",
                     "train.sbatch", "validate.sbatch"]
    for p in tmp_path.iterdir():
        r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
        assert r.returncode == 0, (p.name, r.stderr)
    sim = (tmp_path / "simulate_array.sbatch").read_text()
    assert "#SBATCH --array=0-9" in sim and "--shard-count 10" in sim and str(QUICKSTART) in sim
    assert '${SLURM_ARRAY_TASK_ID}' in sim
    train = (tmp_path / "train.sbatch").read_text()
    assert "--nnodes=2" in train and "pipeline.cli train" in train
    assert "afterok" in (tmp_path / "submit.sh").read_text()
