"""The toy domain: events x (N, 4), one condition mu in [0, 1]. Its simulator draws
x_j = slope * w_j * mu + (0.2 + 0.3 mu) e_j; its model is a conditional Gaussian (an MLP gives
the mean and log sd), trained by the shared trainer on the Gaussian likelihood."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import h5py
import numpy as np
import torch
from torch import nn

from simgan.domains.base import ConditionedFileDomain
from simgan.io import atomic_path, write_json_atomic
from simgan.metrics.classifier import classifier_test
from simgan.metrics.distances import wasserstein1_scaled
from simgan.metrics.gate import gate_checks, verdict
from simgan.report.markdown import write_markdown_report
from simgan.seeding import derive_seed
from toy_domain.config import ToyGaussConfig

W = np.array([1.0, 0.5, -1.0, 2.0], np.float32)


@dataclass
class Events:
    x: np.ndarray
    mu: np.ndarray
    attrs: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.x)

    @property
    def conditions(self):
        return {"mu": self.mu}

    def subset(self, rows):
        return Events(self.x[rows], self.mu[rows], dict(self.attrs))


def read(path, max_events=None) -> Events:
    with h5py.File(path, "r") as f:
        n = len(f["x"]) if max_events is None else min(max_events, len(f["x"]))
        return Events(f["x"][:n].astype(np.float32), f["mu"][:n].astype(np.float32), dict(f.attrs))


def write(path, data: Events) -> None:
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({**data.attrs, "domain": "toy"})
            f["x"], f["mu"] = data.x, data.mu


class ToyGauss(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.net = nn.Sequential(nn.Linear(1, cfg.hidden), nn.Tanh(), nn.Linear(cfg.hidden, 8))

    def fit(self, x, mu):
        return {"main": (torch.as_tensor(x), torch.as_tensor(mu).reshape(-1, 1))}

    def run_modules(self):
        return {"net": self._modules["net"]}

    def ema_modules(self):
        return [self._modules["net"]]

    def make_optimizers(self):
        return {"net": torch.optim.Adam(self.parameters(), lr=self.cfg.lr)}

    def phases(self):
        return [(None, None)]

    def train_step(self, batches, opts, step, autocast, gens):
        x, c = next(batches)
        mean, log_sd = self.net(c).chunk(2, 1)
        loss = (0.5 * ((x - mean) / log_sd.exp()) ** 2 + log_sd).sum(1).mean()
        opts["net"].zero_grad(set_to_none=True)
        loss.backward()
        opts["net"].step()
        return {"nll": float(loss.detach())}

    @torch.no_grad()
    def sample(self, conditions, extra=None, generator=None, precision="fp32", **_):
        mean, log_sd = self.net(conditions.float().reshape(-1, 1)).chunk(2, 1)
        if self.cfg.flaky_shift:
            mean = mean + self.cfg.flaky_shift * torch.randint(0, 2, (1,), generator=generator, device=mean.device)
        return mean + log_sd.exp() * torch.randn(mean.shape, generator=generator, device=mean.device)


class Toy(ConditionedFileDomain):
    name = "toy"
    unit = "events"
    simulator = "the toy simulator"
    headline_keys = ("w1_mean", "auc")

    def read(self, path, max_events=None):
        return read(path, max_events)

    def write(self, path, data):
        write(path, data)

    def model_args(self, cfg, data):
        return {"domain": "toy", "config": cfg.model.model_dump(mode="json")}

    def build_model(self, args):
        return ToyGauss(ToyGaussConfig.model_validate(args["config"]))

    def fit_model(self, model, data):
        return model.fit(data.x, data.mu)

    def checkpoint_fields(self, data):
        return {"condition_ranges": {"mu": [float(data.mu.min()), float(data.mu.max())]}, "extra_conditions": []}

    def features(self, data, cfg):
        return data.x

    def condition_matrix(self, data):
        return data.mu.reshape(-1, 1)

    def with_samples(self, data, samples):
        return Events(np.zeros((0, 4), np.float32) if samples is None else samples.astype(np.float32),
                      data.mu.copy(), {})

    def simulate_data(self, cfg, out, progress, shard_index=None, shard_count=None):
        n = cfg.simulate.events
        lo, hi = (0, n) if shard_count is None else (shard_index * n // shard_count, (shard_index + 1) * n // shard_count)
        rngs = [np.random.default_rng(derive_seed(cfg.seed, i)) for i in range(lo, hi)]
        mu = np.array([r.uniform() for r in rngs], np.float32)
        noise = np.stack([r.standard_normal(4) for r in rngs]).astype(np.float32) if rngs else np.zeros((0, 4))
        x = cfg.domain.slope * W * mu[:, None] + (0.2 + 0.3 * mu[:, None]) * noise
        data = Events(x.astype(np.float32), mu, {"seed": cfg.seed, "events_total": n})
        write(out, data)
        return data

    def merge_files(self, shards, out):
        parts = [read(p) for p in shards]
        write(out, Events(np.concatenate([p.x for p in parts]), np.concatenate([p.mu for p in parts]),
                          parts[0].attrs))

    def validate_data(self, reference, candidate, floor, out_dir, vcfg):
        out_dir, ref, cand, _, fl = self.validation_inputs(reference, candidate, floor, out_dir)

        def compare(other):
            w1 = [wasserstein1_scaled(ref.x[:, j], other.x[:, j]) for j in range(4)]
            auc = classifier_test(np.c_[ref.x, ref.mu], np.c_[other.x, other.mu], vcfg.classifier_seeds,
                                  vcfg.classifier_max_events)["auc"]
            return {"w1_mean": float(np.mean(w1)), "auc": auc}

        m = {**compare(cand), "floor": compare(fl), "domain": "toy", "n_reference": len(ref),
             "n_candidate": len(cand), "reference": str(reference), "candidate": str(candidate),
             "candidate_checkpoint_sha256": json.loads(cand.attrs.get("metadata", "{}")).get("checkpoint_sha256")}
        m["gate"] = gate_checks(m, vcfg.gate, {"w1_mean": "w1_mean_max", "auc": "auc_max"})
        write_markdown_report(out_dir, [f"# Toy validation: {verdict(m)}", "", f"W1 {m['w1_mean']:.3f}"], "toy")
        write_json_atomic(out_dir / "metrics.json", m)
        return m

    def summary_text(self, m, report):
        return (f"validation: {verdict(m)} (W1 {m['w1_mean']:.3f} [floor {m['floor']['w1_mean']:.3f}], AUC "
                f"{m['auc']:.3f} [{m['floor']['auc']:.3f}]); report: {report}")

    def pyfunc_example(self, ckpt):
        import pandas as pd
        return pd.DataFrame({"mu": np.array([0.1, 0.5, 0.9])})

    def pyfunc_predict(self, model, ckpt, frame, seed, precision, extrapolate=False):
        g = torch.Generator().manual_seed(int(seed))
        return model.sample(torch.as_tensor(np.asarray(frame["mu"], np.float32)), None, g).numpy()


DOMAIN = Toy()
