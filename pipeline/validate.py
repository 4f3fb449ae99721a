"""Stage validate: the generated sample against the held-out test split."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline import generate, prepare, train
from pipeline.contract import Context, stage_dir, write_manifest
from simgan.checkpoint import load_checkpoint
from simgan.config import ExperimentConfig
from simgan.domains import domain_configs, domain_of_metrics, file_domain, get_domain, load_config
from simgan.domains.base import GenerateRequest
from simgan.errors import GateFailed, SimganError
from simgan.io import check_output_dir, check_outputs_apart, write_json_atomic
from simgan.metrics.draws import combine_draws, draw_seeds, draws_report, spread_text
from simgan.metrics.gate import uninformative_message
from simgan.report.markdown import write_markdown_report


def inputs(cfg: ExperimentConfig) -> dict[str, Path]:
    """The held-out test split is the reference; the training split (independent Geant4
    showers, as many as the test split taken from it) gives the Geant4-vs-Geant4 floor. With
    validate.draws > 1 the model too: the stage draws the test conditions again at other seeds."""
    ins = {"reference": prepare.outputs(cfg)["test"], "candidate": generate.outputs(cfg)["showers"],
           "floor": prepare.outputs(cfg)["train"]}
    for key, path in generate.outputs(cfg).items():  # the extra samples the domain reports beside
        if key not in ("showers", "timing"):
            ins[key] = path
    if cfg.validate.draws > 1:
        ins["model"] = train.outputs(cfg)["model"]
    return ins


def outputs(cfg: ExperimentConfig) -> dict[str, Path]:
    d = stage_dir(cfg, "validate")
    return {"metrics": d / "metrics.json", "report": d / "report.html"}


def run(cfg: ExperimentConfig, ctx: Context) -> dict[str, Path]:
    """The domain's validation of the generate stage's sample (the first draw), then of
    validate.draws - 1 more samples of the same model at the next seeds, combined into one
    verdict (simgan.metrics.draws): a check passes when it passes at every draw."""
    ins, out = inputs(cfg), outputs(cfg)
    check_outputs_apart(out, ins, "validate")
    t0 = time.time()
    domain = get_domain(cfg.domain.name)
    domain.stages["validate"](cfg, ins, out, ctx.progress)
    seeds = draw_seeds(cfg.seed, cfg.validate.draws)
    per, candidates = [json.loads(out["metrics"].read_text())], [ins["candidate"]]
    ckpt = load_checkpoint(ins["model"]) if len(seeds) > 1 else None
    quiet = cfg.validate.model_copy(update={"plots": False})  # the report plots the first draw
    for k, seed in enumerate(seeds[1:], 1):
        if per[0]["gate"].get("uninformative"):
            break  # the floor is every draw's: a gate that cannot judge the first judges none
        folder = stage_dir(cfg, "validate") / "draws" / f"draw_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        cand = folder / "generated.h5"
        domain.generate_to(GenerateRequest(
            out=cand, checkpoint=ins["model"], ckpt=ckpt, events=cfg.generate.events, energies_from=ins["reference"],
            batch_size=cfg.generate.batch_size, device=cfg.generate.device, precision=cfg.generate.precision,
            seed=seed, progress=False))
        per.append(domain.validate_files(ins["reference"], cand, ins["floor"], folder, quiet, cfg.domain))
        candidates.append(cand)
    m = finish(per, seeds[:len(per)], candidates, out["metrics"].parent)
    write_manifest(cfg, "validate", ins, out, t0, counts={"reference": m["n_reference"], "candidate": m["n_candidate"]},
                   extra={"gate_pass": m["gate"]["pass"], "draws": len(seeds)})
    return out


def finish(per_draw: list[dict], seeds: list, candidates: list, out_dir: Path) -> dict:
    """One verdict from the draws' validations: metrics.json rewritten with the combined figures,
    the report led by the draws' table. A gate that cannot judge at this size is an error
    (after its figures are written, so the report shows why)."""
    shas = {m.get("candidate_checkpoint_sha256") for m in per_draw}
    if len(shas) > 1:
        raise SimganError("the candidates come from different checkpoints (" + ", ".join(
            f"{c}: {m.get('candidate_checkpoint_sha256')}" for c, m in zip(candidates, per_draw))
            + "): the draws of one verdict are one model's samples at other seeds")
    m = combine_draws(per_draw, seeds, candidates)
    write_json_atomic(out_dir / "metrics.json", m)
    report = out_dir / "report.md"
    if report.is_file():
        md = report.read_text().splitlines()
        head = 1 if md and md[0].startswith("# ") else 0
        write_markdown_report(out_dir, md[:head] + [""] + draws_report(m) + md[head:],
                              md[0].lstrip("# ") if head else "simgan validation")
    why = uninformative_message(m["gate"])
    if why:
        raise SimganError(f"{out_dir / 'metrics.json'}: {why}")
    return m


def verdict_line(cfg: ExperimentConfig) -> str:
    return summary_text(json.loads(outputs(cfg)["metrics"].read_text()), outputs(cfg)["report"])


def summary_text(m: dict, report) -> str:
    """The domain's summary (medians over the draws, each beside its floor), then the draws."""
    text = domain_of_metrics(m, str(report)).summary_text(m, report)
    d = m.get("draws") or {}
    if d.get("count", 1) > 1:
        spread = "; ".join(f"{k} {f['median']:.4g}{spread_text(m, k, lambda v: f'{v:.4g}')}"
                           for k, f in d["figures"].items() if k in m["gate"]["checks"])
        text += (f"\njudged on {d['count']} draws of the sampler (seeds {', '.join(map(str, d['seeds']))}; "
                 f"{sum(d['pass'])} pass on their own): a check passes when it passes at every draw"
                 + (f"; {spread}" if spread else ""))
    return text


def validate_cli(args) -> int:
    name = file_domain(args.reference)
    for flag, path in [*(("--candidate", c) for c in args.candidate), ("--floor", args.floor)]:
        other = file_domain(path) if path else name
        if other != name:
            raise SimganError(f"{flag} {path} holds {other} data but --reference {args.reference} holds {name} data; "
                              "compare files of one domain")
    if args.config:
        cfg = load_config(args.config, args.overrides)
        if cfg.domain.name != name:
            raise SimganError(f"--reference {args.reference} holds {name} data but {args.config} configures the "
                              f"{cfg.domain.name} domain")
        vcfg, dcfg = cfg.validate, cfg.domain
    else:
        if args.overrides:
            raise SimganError("key=value overrides need -c CONFIG")
        vcfg, dcfg = domain_configs(name).validate(), domain_configs(name).domain()
    if args.classifier:
        if "classifier" not in type(vcfg).model_fields:
            raise SimganError(f"--classifier: the {name} validation has no classifier choice (a calorimeter option)")
        vcfg = vcfg.model_copy(update={"classifier": args.classifier})
    check_output_dir(args.out, create=False)  # before the work, not after
    candidates = args.candidate
    if args.config and len(candidates) < vcfg.draws:
        raise SimganError(f"{args.config} sets validate.draws={vcfg.draws}: give {vcfg.draws} --candidate files (one "
                          "model's samples of the reference's conditions at as many sampler seeds: `simgan generate "
                          "--seed S`), or validate.draws=" + str(len(candidates)))
    if len(set(map(str, candidates))) < len(candidates):
        raise SimganError(f"--candidate {candidates}: a file given twice is no second draw")
    domain = get_domain(name)
    per = [domain.validate_files(args.reference, candidates[0], args.floor, args.out, vcfg, dcfg, args.dask,
                                 args.scheduler, extra=args.ablation)]
    quiet = vcfg.model_copy(update={"plots": False})
    for k, cand in enumerate(candidates[1:], 1):
        if per[0]["gate"].get("uninformative"):
            break  # (as in the stage: the floor is every draw's)
        per.append(domain.validate_files(args.reference, cand, args.floor, Path(args.out) / "draws" / f"draw_{k}",
                                         quiet, dcfg, args.dask, args.scheduler))
    m = finish(per, [None] * len(per), candidates[:len(per)], Path(args.out))
    print(summary_text(m, Path(args.out) / "report.html"))
    if not m["gate"]["pass"]:
        failed = [k for k, c in m["gate"]["checks"].items() if not c["pass"]]
        raise GateFailed(f"validation gate failed: {', '.join(failed)} (see {Path(args.out) / 'metrics.json'})")
    return 0
