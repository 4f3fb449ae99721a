"""Family-agnostic trainer.

Batches and noise are a pure function of (seed, step, rank), so a run resumed from its
last checkpoint after kill -9 continues exactly as the uninterrupted run. Checkpoints
are written atomically and carry model args, config, package version, optimisers, RNG
state, step and a fingerprint of the config and data; they load with
torch.load(weights_only=True). A checkpoint whose fingerprint differs (another config,
other training data) is never resumed.

A model trains in phases (the two-stage models: energy flow, then shapes), each with its
optimisers and a learning-rate schedule. An averaged copy (EMA) of the sampling network
samples; every val_every steps of the last phase the validation split scores it (mean
separation power of the high-level features) and the best checkpoint becomes the model.
The held-out test split is never opened here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import simgan
from simgan.checkpoint import CKPT_FORMAT, load_checkpoint, resolve_device
from simgan.config import ExperimentConfig, hashable_view
from simgan.errors import SimganError
from simgan.io import atomic_path, file_sha256, text_sha256, write_json_atomic
from simgan.metrics.distances import separation_power, wasserstein1_scaled
from simgan.seeding import derive_seed
from simgan.tracking import end_dead_runs, ensure_store, mlflow_env, process_tags, tracking_uri


def _dist_info() -> tuple[int, int, int, bool]:
    """(rank, world size, local rank, launched by torchrun). A torchrun launch runs DDP even
    with one process, so that one GPU exercises the same NCCL path as many."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)), True
    return 0, 1, 0, False


def _step_seed(seed: int, step: int, rank: int, k: int = 0) -> int:
    return derive_seed(seed, step, rank, k)


def fingerprint(cfg: ExperimentConfig, train_path, val_path) -> str:
    """What a checkpoint was trained under: the model, train and domain config (run-only keys
    excluded), the seed and the content of the training and validation files."""
    view = hashable_view(cfg, ("model", "train", "domain"))
    view["seed"] = cfg.seed
    view["data"] = [file_sha256(train_path), file_sha256(val_path)]
    return text_sha256(json.dumps(view, sort_keys=True))



def ema_decay_at(decay: float, updates: int) -> float:
    """The EMA's decay after `updates` averaging steps: the usual warm-up ramp (TensorFlow's
    ExponentialMovingAverage with num_updates), min(decay, (1 + n) / (10 + n)). Without it a
    short run samples with weights that still hold its first steps (decay 0.999 keeps 37% of
    the weights of 1,000 steps before); with it the average reaches `decay` after about
    10 / (1 - decay) steps (9,000 for 0.999)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def ema_with_warmup(decay: float):
    """AveragedModel's multi_avg_fn for an EMA whose decay follows `ema_decay_at`."""

    @torch.no_grad()
    def update(ema_params, params, n_averaged) -> None:
        torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay_at(decay, int(n_averaged)))

    return update


class _Batches:
    """Random rows of the training tables, drawn from one seeded generator: `next(b)` gives a
    batch of the default table, `b.take(name, size)` one of any table."""

    def __init__(self, tables: dict, batch_size: int, generator: torch.Generator, device: torch.device,
                 warned: set[str] | None = None):
        self.tables, self.batch_size, self.g, self.device = tables, batch_size, generator, device
        self.default = "main" if "main" in tables else next(iter(tables))
        self.warned = set() if warned is None else warned  # the tables already warned about

    def take(self, name: str, size: int | None = None) -> tuple[torch.Tensor, ...]:
        table = self.tables[name]
        size = size or self.batch_size
        if size > len(table[0]) and name not in self.warned:
            self.warned.add(name)
            print(f"simgan: warning: batches of {size} from {len(table[0])} training rows ({name}): rows repeat "
                  "within every batch; lower the batch size or add data", file=sys.stderr)
        idx = torch.randint(len(table[0]), (size,), generator=self.g).to(self.device)
        return tuple(t[idx] for t in table)

    def __iter__(self):
        return self

    def __next__(self):
        return self.take(self.default)


class Trainer:
    """Trains the configured model of `domain` (simgan.domains.get_domain(cfg.domain.name)): the
    domain reads the data, builds the model and gives the monitor's features."""

    def __init__(self, cfg: ExperimentConfig, domain, train_path, val_path, out_dir, progress: bool = True):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.rank, self.world, self.local_rank, self.distributed = _dist_info()
        self.device = resolve_device(cfg.train.device, self.local_rank)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.fingerprint = fingerprint(cfg, train_path, val_path)
        self.train_path = Path(train_path)
        self.domain = domain
        data = self.domain.read(train_path)
        self.args = self.domain.model_args(cfg, data)
        self.ckpt_fields = self.domain.checkpoint_fields(data)
        torch.manual_seed(cfg.seed)  # the initial weights, the same on every rank
        self.model = self.domain.build_model(self.args)
        # fitted and encoded on the CPU, where the data are, then moved with the model
        tables = self.domain.fit_model(self.model, data)
        self.tables = {k: tuple(t.to(self.device) for t in v) for k, v in tables.items()}
        # batch-size warnings once per run, from rank 0 (the others start as if they had warned)
        self._warned: set[str] = set() if self.rank == 0 else set(self.tables)
        self.model.to(self.device)
        self.n_train = len(data)
        del data, tables
        self.val = self.domain.read(val_path, max_events=cfg.train.val_events)
        self.val_features = self.domain.features(self.val, cfg)
        if self.distributed:
            self._wrap_ddp()
        self.opts = self.model.make_optimizers()
        for o in self.opts.values():
            for group in o.param_groups:
                group.setdefault("initial_lr", group["lr"])
        self.phases = []  # (optimiser names, first step, end step)
        start = 0
        for names, steps in self.model.phases():
            n = cfg.train.steps if steps is None else steps
            self.phases.append((tuple(names or self.opts), start, start + n))
            start += n
        self.total_steps = start
        self.ema = None
        if cfg.train.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel

            self.ema = AveragedModel(nn.ModuleList(self.model.ema_modules()),
                                     multi_avg_fn=ema_with_warmup(cfg.train.ema_decay))
        self.step = 0
        self.best_score, self.best_step = float("inf"), -1
        self.mlflow_run_id: str | None = None
        self.ckpt_dir = self.out_dir / "checkpoints"

    def _wrap_ddp(self):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        for name, module in self.model.run_modules().items():
            object.__setattr__(self.model, name, DDP(module, device_ids=ids))

    # -- data, a pure function of the step -------------------------------------------------
    def _batches(self, step: int) -> _Batches:
        g = torch.Generator(device="cpu")
        g.manual_seed(_step_seed(self.cfg.seed, step, self.rank, 1))
        return _Batches(self.tables, self.cfg.train.batch_size, g, self.device, self._warned)

    def _gens(self, step: int) -> dict:
        g = torch.Generator(device=self.device)
        g.manual_seed(_step_seed(self.cfg.seed, step, self.rank, 2))
        return {"noise": g}

    def _autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _set_lr(self, step: int) -> None:
        """Each phase's optimisers: linear warm-up, then constant or cosine down to lr_min_factor."""
        t = self.cfg.train
        for names, lo, hi in self.phases:
            if not lo <= step < hi:
                continue
            k = step - lo
            if k < t.warmup_steps:
                factor = (k + 1) / t.warmup_steps
            elif t.lr_schedule == "cosine":
                frac = (k - t.warmup_steps) / max(hi - lo - t.warmup_steps - 1, 1)
                factor = t.lr_min_factor + (1 - t.lr_min_factor) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
            else:
                factor = 1.0
            for name in names:
                for group in self.opts[name].param_groups:
                    group["lr"] = group["initial_lr"] * factor

    def _any_rank(self, mine: bool) -> bool:
        """True on every rank if it is true on any, so all ranks stop at the same step (a signal may
        reach the ranks a step apart; their clocks pass a time budget a moment apart)."""
        if not (self.distributed and dist.is_initialized()):
            return mine
        flag = torch.tensor([float(mine)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    @contextlib.contextmanager
    def _termination_requests(self):
        """SIGTERM (a batch system's time limit or preemption; torchrun forwards it) sets a flag
        that the loop reads between steps: it saves `last.pt` at that step and stops, so a
        resubmitted job loses nothing. The previous handler comes back afterwards."""
        self._terminate = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_term(signum, frame):
            self._terminate = True

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    # -- the averaged weights ------------------------------------------------------------------
    def _ema_update(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(nn.ModuleList(self.model.ema_modules()))

    @contextlib.contextmanager
    def averaged(self):
        """The model with the averaged weights in place of the raw ones, restored on exit."""
        if self.ema is None:
            yield self.model
            return
        live = [p for m in self.model.ema_modules() for p in m.parameters()]
        saved = [p.detach().clone() for p in live]
        with torch.no_grad():
            for p, a in zip(live, self.ema.module.parameters()):
                p.copy_(a)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for p, s in zip(live, saved):
                    p.copy_(s)

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self, averaged: bool = False) -> dict:
        """`averaged`: the sampling weights are the EMA (model.pt, best.pt); otherwise the raw
        weights and the EMA separately (last.pt, for resuming)."""
        ctx = self.averaged() if averaged else contextlib.nullcontext()
        with ctx:
            weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return {
            "format": CKPT_FORMAT, "simgan_version": simgan.__version__, "step": self.step,
            "model_args": self.args, "config": self.cfg.model_dump(mode="json"), "fingerprint": self.fingerprint,
            "model": weights, "averaged": bool(averaged and self.ema is not None),
            "ema": {k: v.detach().cpu() for k, v in self.ema.state_dict().items()} if self.ema is not None else {},
            "optimizers": {k: o.state_dict() for k, o in self.opts.items()},
            "torch_rng": torch.get_rng_state(), "mlflow_run_id": self.mlflow_run_id or "",
            "best_score": self.best_score, "best_step": self.best_step, **self.ckpt_fields,
        }

    def save(self, path, averaged: bool = False) -> None:
        if self.rank != 0:
            return
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(self.state(averaged), tmp)

    def try_resume(self) -> bool:
        last = self.ckpt_dir / "last.pt"
        if not last.is_file():
            return False
        ckpt = load_checkpoint(last)
        if ckpt.get("fingerprint") != self.fingerprint or ckpt["model_args"] != self.args:
            if self.rank == 0:
                print(f"[train] {last} was written under another config or other training data; "
                      f"starting from scratch")
            return False
        self.model.load_state_dict(ckpt["model"])
        for k, o in self.opts.items():
            o.load_state_dict(ckpt["optimizers"][k])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.step = int(ckpt["step"])
        self.best_score, self.best_step = float(ckpt.get("best_score", float("inf"))), int(ckpt.get("best_step", -1))
        self.mlflow_run_id = ckpt.get("mlflow_run_id") or None
        return True

    # -- validation ----------------------------------------------------------------------------
    def val_metrics(self) -> dict[str, float]:
        """The averaged model against the validation split: separation power of the domain's
        features (mean, and of the first: E_tot/E_inc for the calorimeter) and W1 of the first
        scaled by its spread."""
        g = torch.Generator(device=self.device)
        g.manual_seed(self.cfg.seed)
        with self.averaged() as model:
            model.eval()
            gen = self.domain.sample_like(model, self.val, g)
            model.train()
        feats = self.domain.features(gen, self.cfg)
        seps = [separation_power(self.val_features[:, j], feats[:, j]) for j in range(feats.shape[1])]
        return {"val_sep_mean": float(np.mean(seps)), "val_sep_etot": float(seps[0]),
                "val_w1_etot": wasserstein1_scaled(self.val_features[:, 0], feats[:, 0])}

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg.train
        resumed = self.try_resume()
        if not resumed and self.rank == 0:  # a best checkpoint of an earlier run is no candidate
            (self.ckpt_dir / "best.pt").unlink(missing_ok=True)
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
            bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.cfg.model.family}", unit="step")
        self.model.train()
        last_phase_start = self.phases[-1][1]
        t0, s0 = time.perf_counter(), self.step
        # in DDP the ranks agree on a stop every few steps (a collective per step would cost a sync)
        check_every = 10 if self.distributed else 1
        try:
            with self._termination_requests():
                while self.step < self.total_steps:
                    self._set_lr(self.step)
                    logs = self.model.train_step(self._batches(self.step), self.opts, self.step, self._autocast,
                                                 self._gens(self.step))
                    bad = [k for k, v in logs.items() if not np.isfinite(v)]
                    if bad:
                        raise SimganError(f"training stopped: non-finite {', '.join(bad)} at step {self.step} "
                                          f"(last good checkpoint: {self.ckpt_dir / 'last.pt'}); lower the learning "
                                          f"rate or use precision=fp32")
                    self.step += 1
                    if self.step > last_phase_start:
                        self._ema_update()
                    if bar:
                        bar.update(1)
                    validate_now = self.step > last_phase_start and (
                        self.step % cfg.val_every == 0 or self.step == self.total_steps)
                    if validate_now:
                        logs.update(self.val_metrics())
                        if logs["val_sep_mean"] < self.best_score:
                            self.best_score, self.best_step = logs["val_sep_mean"], self.step
                            self.save(self.ckpt_dir / "best.pt", averaged=True)
                    if validate_now or self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        if self.rank == 0:
                            _append_jsonl(metrics_path, {"step": self.step, **logs})
                            tracker.log_metrics(logs, self.step)
                    if self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps:
                        self.save(self.ckpt_dir / "last.pt")
                        if cfg.max_seconds and self._any_rank(time.perf_counter() - t0 > cfg.max_seconds):
                            break
                    if self.step % check_every == 0 and self._any_rank(self._terminate):
                        self.save(self.ckpt_dir / "last.pt")
                        raise Terminated(f"training stopped by SIGTERM (a time limit or preemption) at step "
                                         f"{self.step} of {self.total_steps}; {self.ckpt_dir / 'last.pt'} holds it: "
                                         "run the same command again to resume")
        except (KeyboardInterrupt, Terminated):  # the run is KILLED in MLflow, not FINISHED; `last.pt` resumes it
            tracker.end("KILLED")
            raise
        except BaseException:
            tracker.end("FAILED")
            raise
        finally:
            if bar:
                bar.close()
        elapsed = time.perf_counter() - t0
        gsteps = self.step - s0
        per_step = cfg.batch_size * (getattr(self.cfg.model, "n_critic", 0) + 1)
        complete = self.step >= self.total_steps
        selected = self.step
        if self.rank == 0:
            best = self.ckpt_dir / "best.pt"
            if complete and cfg.select == "best_val" and best.is_file():
                with atomic_path(self.out_dir / "model.pt", suffix=".pt") as tmp:
                    shutil.copyfile(best, tmp)
                selected = self.best_step
            else:
                self.save(self.out_dir / "model.pt", averaged=True)
            if complete:  # the domain's post-training fit on the training split (a calibration, a latent sampler)
                self.calibration = self.domain.after_training(self.cfg, self.out_dir / "model.pt", self.train_path)
        info = {"steps": self.step, "total_steps": self.total_steps, "resumed_from_step": s0,
                "samples_per_s": per_step * gsteps * self.world / elapsed if elapsed > 0 else 0.0,
                "train_seconds": elapsed, "complete": complete, "world_size": self.world, "ddp": self.distributed,
                "device": str(self.device), "precision": cfg.precision, "mlflow_run_id": self.mlflow_run_id or "",
                "tracking_uri": tracker.uri, "n_train": self.n_train, "selected_step": selected,
                "best_val_sep_mean": self.best_score if np.isfinite(self.best_score) else None,
                "ema_decay": cfg.ema_decay, "calibration": getattr(self, "calibration", None)}
        if self.device.type == "cuda":
            info["peak_gpu_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.rank == 0:
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
    """Drop rows logged after the checkpoint we resume from (they will be logged again), and
    a row torn by a kill while it was written."""
    if not path.is_file():
        return

    def step_of(line: str) -> float:
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            return math.inf  # torn or foreign: dropped
    rows = [r for r in path.read_text().splitlines() if r.strip() and step_of(r) <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(r + "\n" for r in rows))


class Terminated(SimganError):
    """Training stopped on SIGTERM after saving its checkpoint (128 + SIGTERM, as a shell reports it)."""

    exit_code = 143


class _Tracker:
    """MLflow tracking on rank 0; a no-op elsewhere."""

    def __init__(self, cfg: ExperimentConfig, enabled: bool, run_id: str | None):
        self.enabled = enabled
        self.uri = tracking_uri(cfg.register.tracking_uri)
        self.run_id = run_id
        if not enabled:
            return
        ensure_store(self.uri)
        mlflow_env()  # bounded retries: an unreachable server fails in seconds
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        try:
            experiment = mlflow.set_experiment(cfg.name)
            end_dead_runs(mlflow.MlflowClient(self.uri), [experiment.experiment_id])  # a killed earlier attempt's
            # (the experiment by id: when jobs create it at once, MLflow's set_experiment returns it to
            # the losers of the race without making it active, and a bare start_run lands in Default)
            run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(
                experiment_id=experiment.experiment_id, run_name=f"train-{cfg.model.family}")
            mlflow.set_tags(process_tags("KILLED"))
        except Exception as exc:  # network and store errors come in many types
            raise SimganError(f"MLflow tracking at {self.uri} failed: {str(exc).splitlines()[0][:300]}; fix "
                              "register.tracking_uri or train with train.mlflow=false") from None
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

    def end(self, status: str = "FINISHED"):
        if self.enabled:
            import mlflow

            mlflow.end_run(status=status)
            self.enabled = False


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
