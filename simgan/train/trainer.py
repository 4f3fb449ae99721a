"""Family-agnostic trainer.

Batches and noise are a pure function of (seed, step, rank), so a run resumed from its
last checkpoint after kill -9 continues exactly as the uninterrupted run. Checkpoints
are written atomically and carry model args, config, package version, optimisers, RNG
state and step; they load with torch.load(weights_only=True).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import simgan
from simgan.config import ExperimentConfig
from simgan.data import calochallenge as cc
from simgan.errors import SimganError
from simgan.io import atomic_path, write_json_atomic
from simgan.metrics.distances import wasserstein1_scaled
from simgan.models.registry import build_model, model_from_args

CKPT_FORMAT = 2  # 2: threshold-aware transform with response statistics


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise SimganError(f"device {spec!r} requested but CUDA is not available")
    if spec == "cuda":  # an index, so that set_device and the memory counters accept it
        return torch.device(f"cuda:{local_rank}")
    return torch.device(spec)


def _dist_info() -> tuple[int, int, int, bool]:
    """(rank, world size, local rank, launched by torchrun). A torchrun launch runs DDP even
    with one process, so that one GPU exercises the same NCCL path as many."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)), True
    return 0, 1, 0, False


def _step_seed(seed: int, step: int, rank: int, k: int = 0) -> int:
    return int(np.random.SeedSequence([seed, step, rank, k]).generate_state(1, dtype=np.uint64)[0] % (2**62))


def model_args(cfg: ExperimentConfig, binning, n_extra: int) -> dict:
    return {"config": cfg.model.model_dump(mode="json"), "n_voxels": binning.n_voxels,
            "layer_voxels": [l.n_voxels for l in binning.layers if l.n_voxels],
            "n_extra": n_extra, "threshold_mev": cfg.domain.threshold_mev}


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SimganError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SimganError(f"{path}: not a readable simgan checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT or "model_args" not in ckpt:
        raise SimganError(f"{path}: not a simgan checkpoint (format {CKPT_FORMAT})")
    return ckpt


def model_from_checkpoint(path, device="cpu"):
    ckpt = load_checkpoint(path)
    model = model_from_args(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


class Trainer:
    def __init__(self, cfg: ExperimentConfig, train_path, val_path, out_dir, progress: bool = True):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.rank, self.world, self.local_rank, self.distributed = _dist_info()
        self.device = resolve_device(cfg.train.device, self.local_rank)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        data = cc.read(train_path)
        self.binning = data.binning
        self.extra_keys = sorted(data.conditions)
        extra = np.stack([data.conditions[k] for k in self.extra_keys], 1) if self.extra_keys else None
        self.args = model_args(cfg, data.binning, len(self.extra_keys))
        torch.manual_seed(cfg.seed)  # the initial weights, the same on every rank
        self.model = build_model(cfg.model, **{k: self.args[k] for k in ("n_voxels", "layer_voxels", "n_extra", "threshold_mev")})
        # fitted and encoded on the CPU, where the data are, then moved with the model
        self.u = self.model.fit(data.energies, data.showers, extra, data.binning).to(self.device)
        e = torch.as_tensor(data.energies)
        self.c = self.model.transform.cond(e, None if extra is None else torch.as_tensor(extra)).to(self.device)
        self.model.to(self.device)
        self.n_train = len(e)
        self.val = cc.read(val_path, max_events=cfg.train.val_events)
        if self.distributed:
            self._wrap_ddp()
        self.opts = self.model.make_optimizers()
        self.step = 0
        self.mlflow_run_id: str | None = None
        self.ckpt_dir = self.out_dir / "checkpoints"

    def _wrap_ddp(self):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        m = self.model
        if m.family == "gan":
            object.__setattr__(m, "g_run", DDP(m.generator, device_ids=ids))
            object.__setattr__(m, "d_run", DDP(m.critic, device_ids=ids))
        else:
            object.__setattr__(m, "g_run", DDP(m, device_ids=ids))

    # -- data, a pure function of the step -------------------------------------------------
    def _batches(self, step: int):
        g = torch.Generator(device="cpu")
        g.manual_seed(_step_seed(self.cfg.seed, step, self.rank, 1))
        bs = self.cfg.train.batch_size
        while True:
            idx = torch.randint(self.n_train, (bs,), generator=g).to(self.device)
            yield self.u[idx], self.c[idx]

    def _gens(self, step: int) -> dict:
        g = torch.Generator(device=self.device)
        g.manual_seed(_step_seed(self.cfg.seed, step, self.rank, 2))
        return {"noise": g}

    def _autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _out_of_time(self, mine: bool) -> bool:
        """Every rank stops at the same step: rank 0's clock decides."""
        if not (self.distributed and dist.is_initialized()):
            return mine
        flag = torch.tensor([float(mine)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.broadcast(flag, 0)
        return bool(flag.item())

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "format": CKPT_FORMAT, "simgan_version": simgan.__version__, "step": self.step,
            "model_args": self.args, "config": self.cfg.model_dump(mode="json"),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizers": {k: o.state_dict() for k, o in self.opts.items()},
            "torch_rng": torch.get_rng_state(), "mlflow_run_id": self.mlflow_run_id or "",
            "extra_conditions": self.extra_keys,
        }

    def save(self, path) -> None:
        if self.rank != 0:
            return
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(self.state(), tmp)

    def try_resume(self) -> bool:
        last = self.ckpt_dir / "last.pt"
        if not last.is_file():
            return False
        ckpt = load_checkpoint(last)
        if ckpt["model_args"] != self.args:
            raise SimganError(
                f"{last}: checkpoint was written for a different model ({ckpt['model_args']['config']}) "
                f"than the config asks for ({self.args['config']}); use --force or another runs_dir")
        self.model.load_state_dict(ckpt["model"])
        for k, o in self.opts.items():
            o.load_state_dict(ckpt["optimizers"][k])
        torch.set_rng_state(ckpt["torch_rng"])
        self.step = int(ckpt["step"])
        self.mlflow_run_id = ckpt.get("mlflow_run_id") or None
        return True

    # -- the loop ------------------------------------------------------------------------------
    def val_monitor(self) -> float:
        """W1 of E_tot/E_inc on the validation split, scaled by the reference's spread."""
        self.model.eval()
        g = torch.Generator(device=self.device)
        g.manual_seed(self.cfg.seed)
        e = torch.as_tensor(self.val.energies)
        gen = self.model.sample(e.to(self.device), None, g).cpu().numpy()
        self.model.train()
        return wasserstein1_scaled(self.val.showers.sum(1) / self.val.energies, gen.sum(1) / self.val.energies)

    def fit(self) -> dict:
        cfg = self.cfg.train
        resumed = self.try_resume()
        tracker = _Tracker(self.cfg, self.rank == 0 and cfg.mlflow, self.mlflow_run_id)
        self.mlflow_run_id = tracker.run_id
        if not resumed:
            tracker.log_params(self.cfg)
        metrics_path = self.out_dir / "metrics.jsonl"
        if self.rank == 0:
            _truncate_jsonl(metrics_path, self.step)
        bar = None
        if self.progress and self.rank == 0:
            from tqdm import tqdm
            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.cfg.model.family}", unit="step")
        self.model.train()
        t0, s0 = time.perf_counter(), self.step
        try:
            while self.step < cfg.steps:
                logs = self.model.train_step(self._batches(self.step), self.opts, self.step, self._autocast,
                                             self._gens(self.step))
                bad = [k for k, v in logs.items() if not np.isfinite(v)]
                if bad:
                    raise SimganError(f"training stopped: non-finite {', '.join(bad)} at step {self.step} "
                                      f"(last good checkpoint: {self.ckpt_dir / 'last.pt'}); lower the learning "
                                      f"rate or use precision=fp32")
                self.step += 1
                if bar:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                        logs["val_w1_etot"] = self.val_monitor()
                    if self.rank == 0:
                        _append_jsonl(metrics_path, {"step": self.step, **logs})
                        tracker.log_metrics(logs, self.step)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save(self.ckpt_dir / "last.pt")
                    if cfg.max_seconds and self._out_of_time(time.perf_counter() - t0 > cfg.max_seconds):
                        break
        finally:
            if bar:
                bar.close()
        elapsed = time.perf_counter() - t0
        gsteps = self.step - s0
        per_step = cfg.batch_size * (getattr(self.cfg.model, "n_critic", 0) + 1)
        info = {"steps": self.step, "samples_per_s": per_step * gsteps * self.world / elapsed if elapsed > 0 else 0.0,
                "train_seconds": elapsed, "complete": self.step >= cfg.steps, "world_size": self.world, "ddp": self.distributed, "device": str(self.device),
                "precision": cfg.precision, "mlflow_run_id": self.mlflow_run_id or "",
                "tracking_uri": tracker.uri, "n_train": self.n_train}
        if self.device.type == "cuda":
            info["peak_gpu_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.rank == 0:
            self.save(self.out_dir / "model.pt")
            write_json_atomic(self.out_dir / "run_info.json", info)
            tracker.log_metrics({"samples_per_s": info["samples_per_s"]}, self.step)
            tracker.log_artifact(self.out_dir / "run_info.json")
        tracker.end()
        if self.distributed and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        return info


def _append_jsonl(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_jsonl(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
    if not path.is_file():
        return
    rows = [r for r in path.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(r + "\n" for r in rows))


class _Tracker:
    """MLflow tracking on rank 0; a no-op elsewhere."""

    def __init__(self, cfg: ExperimentConfig, enabled: bool, run_id: str | None):
        from simgan.registry import tracking_uri

        self.enabled = enabled
        self.uri = tracking_uri(cfg.register.tracking_uri)
        self.run_id = run_id
        if not enabled:
            return
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(cfg.name)
        run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=f"train-{cfg.model.family}")
        self.run_id = run.info.run_id

    def log_params(self, cfg: ExperimentConfig):
        if self.enabled:
            import mlflow

            flat = _flatten({k: cfg.model_dump(mode="json")[k] for k in ("model", "train", "domain")})
            flat["seed"] = cfg.seed
            mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})

    def log_metrics(self, logs: dict, step: int):
        if self.enabled:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=step)

    def log_artifact(self, path):
        if self.enabled:
            import mlflow

            mlflow.log_artifact(str(path))

    def end(self):
        if self.enabled:
            import mlflow

            mlflow.end_run()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
