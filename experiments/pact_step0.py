"""What PACT's regulariser asks at step 0: ``python -m experiments.pact_step0 [overrides] [--out CSV]``.

At the first step the policy is the aligned model, so any KL the regulariser reports there comes from its target,
not from drift: the weighting of S by relu(v), the post-only reference mixed in by the gate, the temperature.
On the configured run's training rows (task and poison, as the fine-tune sees them) this measures, per answer
position and split by row kind: the gate c (mean and sd over all positions; mean over the first ``prefix_n``), the
KL with the gate on (official) and off (c = 0), the share of the target's mass on the ``TOP_M`` highest-weighted
tokens of S, the entropy within S (at the loss temperature) of the full-context and post-only references and of the
target, and the cross-entropy on the answer tokens (the SFT term beside PACT's; KLs are the loss's T^2 * KL).
Rows (one per model x row kind) replace the same model and task's rows in ``--out`` (default: print only).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

from analysis.provenance import recording
from pact.data import rows as D
from pact.data.labels import IGNORE_INDEX, answer_positions
from pact.loss import LOG_EPS, pact_gate, pact_kl, pact_target
from pact.models.loading import load_model, load_tokenizer
from pact.run import pipeline as P
from pact.run.cli import OVERRIDES, exit_on_help, fail, pop_option, run_cli
from pact.run.config import CONF_DIR, compose_config, validate
from pact.runtime.fileio import write_atomic
from pact.runtime.store import code_hash, module_sources, stable_key
from pact.training.methods import FinetuneContext, build_method

SETTINGS = OmegaConf.load(CONF_DIR / "analysis.yaml").pact_step0
TOP_M = tuple(SETTINGS.top_m)
STEP0_CODE = code_hash(*module_sources("experiments.pact_step0"))  # part of the step0 artifact's key


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy (nats) of softmax(logits / T) over the last axis."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def batch_measures(method, full: torch.Tensor, post: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-position measures [B, A] (and per-row KLs) of one batch, with the aligned model as the policy."""
    opts = method.kl_options()
    weights = method.weights
    gate = pact_gate(full, post, mask, **{k: v for k, v in opts.items() if k != "temperature"})
    q = pact_target(full, post, gate, weights, opts["temperature"])
    order = torch.argsort(weights, descending=True)
    out = {"gate": gate, "gate_sq": gate ** 2, "entropy_full": entropy(full, opts["temperature"]),
           "entropy_post": entropy(post, opts["temperature"]),
           "entropy_target": -(q * q.clamp_min(LOG_EPS).log()).sum(dim=-1)}
    for m in TOP_M:
        out[f"target_mass_top{m}"] = q[..., order[:m]].sum(dim=-1)
    # the loss's own KL per row (a row's mean over its positions, times its positions, sums to the batch total)
    for name, g in (("kl_gate_on", None), ("kl_gate_off", torch.zeros_like(gate))):
        out[name] = torch.stack([pact_kl(full[i:i + 1], full[i:i + 1], post[i:i + 1], mask[i:i + 1],
                                         weights, **opts, gate=None if g is None else g[i:i + 1])
                                 for i in range(full.shape[0])])
    return out


@torch.no_grad()
def answer_ce(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row of a collated batch, the mean cross-entropy (nats) of its full-context ``logits`` [B, T, V] on the
    answer tokens: the SFT term PACT's KL is added to."""
    logits = logits[:, :-1].float().cpu()
    labels = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")
    valid = (labels != IGNORE_INDEX).float()
    return (ce * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1)


def prepared_run(overrides: list[str]):
    """(config, started run, prepared PACT method, training rows, their encoded examples) of the run that
    ``overrides`` configure; stops with one line when its method is not a PACT method."""
    cfg = validate(compose_config(overrides))
    if "tokens" not in cfg.method:
        fail(f"method={cfg.method.id} is not a PACT method")
    up = P.start(cfg)
    tok = load_tokenizer(up.aligned.tokenizer_path, cfg.model.trust_remote_code)
    method = build_method(cfg.method)
    method.prepare(FinetuneContext(aligned=up.aligned, base=up.base, data=up.data, tokenizer=tok,
                                   prompt_format=up.aligned.prompt_format, max_len=int(cfg.model.max_len),
                                   seed=int(cfg.seed), dtype=cfg.model.dtype, store=up.store))
    rows = P.finetune_rows(cfg, up.data)
    return cfg, up, method, rows, D.encode_sft(rows, tok, up.aligned.prompt_format, int(cfg.model.max_len))


def measure(overrides: list[str]) -> pd.DataFrame:
    """The step-0 table of the config made of ``overrides`` (method defaults to pact), a store artifact (stage
    ``step0``) keyed by the training rows' tokens, the aligned model, the safety set, the loss's options and this
    code: a rerun reads it instead of measuring again."""
    if not any(o.startswith("method=") for o in overrides):
        overrides = ["method=pact", *overrides]
    cfg, up, method, rows, examples = prepared_run(overrides)
    labels = {"model": cfg.model.name, "task": cfg.task.name, "poison_ratio": float(cfg.poison.ratio),
              "seed": int(cfg.seed), "temperature": float(cfg.method.temperature)}
    slice_ = {"rows": stable_key([[e["input_ids"], e["labels"], bool(r.get("poison"))]
                                  for e, r in zip(examples, rows)]),
              "method": {k: cfg.method[k] for k in ("weights", "subset", "extra_bucket")},
              "kl": method.kl_options(), "header": method.header, "batch_size": int(SETTINGS.batch_size),
              "dtype": cfg.model.dtype, "top_m": list(TOP_M), "labels": labels, "code": STEP0_CODE}

    def build(tmp: Path) -> dict[str, Any]:
        model = load_model(up.aligned.path, cfg.model.dtype, cfg.model.trust_remote_code).eval()
        table = step0_table(model, method, examples, rows, labels, int(cfg.method.prefix_n),
                            int(SETTINGS.batch_size))
        table.to_csv(tmp / "step0.csv", index=False)
        return {"rows": len(examples)}

    art = up.store.build("step0", slice_, {"aligned": up.aligned.key, "tokens": method.tokens_key}, build)
    return pd.read_csv(art.file("step0.csv"))


def step0_table(model, method, examples: list[dict[str, Any]], rows: list[dict[str, Any]], labels: dict[str, Any],
                prefix_n: int, batch_size: int) -> pd.DataFrame:
    """One row per row kind (all, task, poison) of the measures of :func:`batch_measures` and the answer CE,
    averaged over answer positions, with ``labels`` (model, task, ...) in front."""
    sums: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, float]] = {}
    seen: list[torch.Tensor] = []
    # The reference's first forward is the full-context one: its logits, caught here, give the CE too (one pass).
    hook = model.register_forward_hook(lambda _module, _args, out: seen.append(out.logits))
    try:
        for lo in range(0, len(examples), batch_size):
            batch, kinds = examples[lo:lo + batch_size], rows[lo:lo + batch_size]
            seen.clear()
            full, post = method.reference(model, batch)
            collated = D.SFTCollator(0)([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in batch])
            if seen[0].shape[:2] != collated["input_ids"].shape:
                raise RuntimeError("PactMethod.reference no longer runs the full context first")
            _, mask = answer_positions(collated["labels"])
            vals = batch_measures(method, full, post, mask)
            vals["ce"] = answer_ce(seen[0], collated)
            n_pos = mask.sum(dim=1).float()
            early = mask & (torch.arange(mask.shape[1]) < prefix_n)
            for i, row in enumerate(kinds):
                for kind in ("all", "poison" if row.get("poison") else "task"):
                    s, c = sums.setdefault(kind, {}), counts.setdefault(kind, {})
                    c["rows"] = c.get("rows", 0) + 1
                    for name, v in vals.items():
                        if name.startswith("kl_") or name == "ce":  # per-row mean -> position-weighted sum
                            s[name] = s.get(name, 0.0) + float(v[i]) * float(n_pos[i])
                            c[name] = c.get(name, 0.0) + float(n_pos[i])
                        else:
                            s[name] = s.get(name, 0.0) + float(v[i][mask[i]].sum())
                            c[name] = c.get(name, 0.0) + float(n_pos[i])
                    s["gate_prefix"] = s.get("gate_prefix", 0.0) + float(vals["gate"][i][early[i]].sum())
                    c["gate_prefix"] = c.get("gate_prefix", 0.0) + float(early[i].sum())
    finally:
        hook.remove()
    weights = method.weights.clamp_min(0)
    top = torch.sort(weights, descending=True).values
    out = []
    for kind in ("all", "task", "poison"):
        if kind not in sums:
            continue
        row: dict[str, Any] = {**{k: labels[k] for k in ("model", "task", "poison_ratio", "seed")}, "rows": kind,
                               "n_rows": int(counts[kind]["rows"]), "positions": int(counts[kind]["gate"]),
                               "safety_set_size": int(len(weights)), "temperature": labels["temperature"]}
        for name in sums[kind]:
            row[name] = sums[kind][name] / counts[kind][name] if counts[kind][name] else math.nan
        row["gate_sd"] = math.sqrt(max(row.pop("gate_sq") - row["gate"] ** 2, 0.0))
        for m in TOP_M:  # the same share for the weights alone: how peaked relu(v) is
            row[f"weight_share_top{m}"] = float(top[:m].sum() / top.sum())
        out.append(row)
    return pd.DataFrame(out)


def write(table: pd.DataFrame, path: Path) -> None:
    """Replace this model and task's rows in ``path`` (a CSV shared by every model measured) with ``table``. The file
    comes out the same whatever order the models were measured in: rows sorted by model and task (row kinds in
    measuring order), this code's columns first."""
    if path.exists():
        old = pd.read_csv(path)
        same = old.set_index(["model", "task"]).index.isin(table.set_index(["model", "task"]).index)
        columns = [*table.columns, *(c for c in old.columns if c not in table.columns)]
        table = pd.concat([old[~same], table], ignore_index=True)[columns]
        table = table.sort_values(["model", "task"], kind="stable", ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, table.to_csv(index=False, float_format="%.6g"))


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    exit_on_help(args, "experiments.pact_step0", __doc__, f"{OVERRIDES} [--out CSV]")
    out = pop_option(args, "--out", "a CSV path")
    out = Path(out) if out is not None else None
    table = run_cli(lambda: measure(args))
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        print(table.T.to_string(header=False))
    if out is not None:
        with recording(out.parent, "experiments.pact_step0", argv):
            write(table, out)
        print(f"-> {out}")


if __name__ == "__main__":
    main()
