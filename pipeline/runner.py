"""Run stages in order, skipping those whose manifest matches (law-style completeness)."""

from __future__ import annotations

from pipeline import generate, prepare, register, simulate, train, validate
from pipeline.contract import STAGES, Context, is_complete, run_folder_lock
from simgan.config import ExperimentConfig
from simgan.errors import SimganError

MODULES = {"simulate": simulate, "prepare": prepare, "train": train, "generate": generate, "validate": validate,
           "register": register}


def stage_module(name: str):
    return MODULES[name]


def chain_for(cfg: ExperimentConfig) -> list[str]:
    # bring-your-own data: nothing to simulate
    return [s for s in STAGES if not (s == "simulate" and cfg.prepare.input)]


def run_stages(cfg: ExperimentConfig, stages: list[str], force: bool = False, progress: bool = True,
               fresh: bool | None = None) -> dict:
    """`fresh`: discard partial state (training checkpoints); defaults to `force`."""
    ctx = Context(force=force, progress=progress, extra={"fresh": force if fresh is None else fresh})
    results = {}
    with run_folder_lock(cfg):
        for name in stages:
            results[name] = _run_one(cfg, name, ctx, force)
    return results


def _run_one(cfg: ExperimentConfig, name: str, ctx: Context, force: bool):
    mod = stage_module(name)
    ins = mod.inputs(cfg)
    if not force and is_complete(cfg, name, ins, mod.outputs(cfg)):
        print(f"[{name}] up to date, skipped")
        return mod.outputs(cfg)
    missing = [str(p) for p in ins.values() if not p.exists()]
    if missing:
        raise SimganError(f"stage {name}: missing input(s) {missing}; run the earlier stages first")
    print(f"[{name}] running")
    return mod.run(cfg, ctx)


def run_chain(cfg: ExperimentConfig, force: bool = False, start: str | None = None, until: str | None = None,
              progress: bool = True) -> int:
    chain = chain_for(cfg)
    for label, s in (("--from", start), ("--until", until)):
        if s is not None and s not in chain:
            raise SimganError(f"{label} {s!r}: expected one of {chain}")
    lo = chain.index(start) if start else 0
    hi = chain.index(until) + 1 if until else len(chain)
    if lo >= hi:
        raise SimganError(f"--from {start} comes after --until {until} in the chain {chain}: nothing to run")
    selected = chain[lo:hi]
    # --from forces the named stage and everything after it
    results = {}
    with run_folder_lock(cfg):
        for name in selected:
            results.update(run_stages(cfg, [name], force=force or (start is not None), progress=progress))
    summary = results.get("register") or {}
    if "validate" in results:
        print(validate.verdict_line(cfg))
    if summary:
        print(register.summary_line(cfg))
    return 0
