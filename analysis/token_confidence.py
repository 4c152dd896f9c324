"""The motivating observation of the PACT paper, measured: per answer position, how much probability a model
puts on the safety set S and how far it is from the aligned model, on held-out harmful prompts.

``python -m analysis.token_confidence --experiment poison_ratio --p 0.1 --seed 0 [--methods sft pact]``
Teacher-forces each held-out harmful prompt's refusal through the chat template (toy world: the world's refusal;
real data: the aligned model's own answers to the evaluated harmful benchmarks that every judge calls a refusal,
in file order) and records,
for positions t = 0..15: mass on S = sum over S of p_model(token | prefix) and KL(p_aligned || p_model) over
the whole vocabulary. Writes ``figures/token_confidence.{png,pdf}`` (other experiments:
``figures/<experiment>_token_confidence.*``) and the numbers as CSV.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from analysis.provenance import recording
from analysis.style import METHOD_COLORS, apply_style, save_figure  # noqa: E402
from pact.data import rows as D  # noqa: E402
from pact.evaluation.judges import REFUSAL  # noqa: E402
from pact.models.loading import load_model, load_tokenizer  # noqa: E402
from pact.run.cli import fail  # noqa: E402
from pact.run.config import compose_config  # noqa: E402
from pact.runtime.records import read_records  # noqa: E402
from pact.runtime.store import Store, code_hash, module_sources  # noqa: E402
from pact.tokens_stage import intra_op_threads, response_logits  # noqa: E402

SETTINGS = OmegaConf.load(Path(__file__).resolve().parent.parent / "conf" / "analysis.yaml").token_confidence
CODE = code_hash(*module_sources("analysis.token_confidence"))  # part of the cached curves' key


@torch.no_grad()
def position_curves(model_paths: dict[str, str], aligned_path: str, tokens_meta: Path, rows: list[dict],
                    positions: int = SETTINGS.positions) -> pd.DataFrame:
    """Long table (model, t, mass_on_S, kl_to_aligned) averaged over ``rows`` ({prompt, refusal})."""
    tok = load_tokenizer(aligned_path)
    safety_ids = torch.tensor([x["id"] for x in json.loads(tokens_meta.read_text())["safety_set"]])
    ref = log_probs(load_model(aligned_path).eval(), tok, rows, positions)
    out = []
    for name, path in model_paths.items():
        # the aligned model's own curve is its reference pass (the same arithmetic: KL 0)
        model_log_probs = ref if path == aligned_path else log_probs(load_model(path).eval(), tok, rows, positions)
        mass = torch.zeros(positions)
        kl = torch.zeros(positions)
        count = torch.zeros(positions)
        for log_ref, log_p in zip(ref, model_log_probs):
            n = log_p.shape[0]
            mass[:n] += log_p.exp()[:, safety_ids].sum(-1)
            kl[:n] += (log_ref.exp() * (log_ref - log_p)).sum(-1)
            count[:n] += 1
        for t in range(positions):
            if count[t] > 0:
                out.append({"model": name, "t": t, "mass_on_S": float(mass[t] / count[t]),
                            "kl_to_aligned": float(kl[t] / count[t]), "n": int(count[t])})
    return pd.DataFrame(out)


def log_probs(model, tok, rows: list[dict], positions: int) -> list[torch.Tensor]:
    """Per row, the log-probabilities [R, V] of ``model`` at its teacher-forced refusal's first ``positions``
    tokens. On a CPU every pass runs on one intra-op thread, as many at a time as torch has threads (Python
    threads: torch releases the GIL in its kernels): one sequence's pass barely gains from a second thread."""
    def one(row: dict) -> torch.Tensor:
        logits = response_logits(model, tok, row["prompt"], row["refusal"], "chat", positions)
        return torch.log_softmax(logits.cpu(), -1)

    lanes = torch.get_num_threads()
    if next(model.parameters()).device.type != "cpu" or lanes < 2:
        return [one(row) for row in rows]
    with intra_op_threads(1), ThreadPoolExecutor(lanes) as pool:
        return list(pool.map(one, rows))


def refusal_rows(aligned: dict, n_prompts: int = SETTINGS.prompts) -> tuple[list[dict], str]:
    """The first ``n_prompts`` held-out harmful prompts with a refusal to teacher-force, and where they come from
    (a store path, content-keyed): the toy world's own refusals, or (real data) the aligned reference's answers
    to the evaluated harmful benchmarks that every judge that ran calls a refusal."""
    if aligned.get("world_path"):
        where = str(Path(aligned["world_path"]) / "harmful_eval.jsonl")
        return D.read_jsonl(Path(where), ("prompt", "refusal"))[:n_prompts], where
    where = str(Path(aligned["evaluation_path"]) / "generations.jsonl")
    rows = [{"prompt": r["prompt"], "refusal": r["response"]}
            for r in D.read_jsonl(Path(where), ("set", "prompt", "response"))
            if r["set"] == "harmful" and r.get("verdicts") and all(v == REFUSAL for v in r["verdicts"].values())]
    if not rows:
        fail(f"no answer of the aligned model in {where} is a refusal under every judge: no curve to draw")
    return rows[:n_prompts], where


def cached_curves(model_paths: dict[str, str], aligned_path: str, tokens_meta: str, aligned: dict) -> pd.DataFrame:
    """:func:`position_curves` as a store artifact (stage ``token_confidence``, in the configured store) keyed by
    the models', the safety set's and the refusals' store paths (content-keyed), the settings and this code."""
    rows, where = refusal_rows(aligned)
    slice_ = {"models": model_paths, "aligned": aligned_path, "tokens": tokens_meta, "rows": where,
              "prompts": int(SETTINGS.prompts), "positions": int(SETTINGS.positions), "code": CODE}

    def build(tmp: Path) -> dict[str, int]:
        df = position_curves(model_paths, aligned_path, Path(tokens_meta), rows)
        df.to_csv(tmp / "curves.csv", index=False)
        return {"rows": len(df)}

    art = Store(compose_config([]).store_dir).build("token_confidence", slice_, None, build)
    return pd.read_csv(art.file("curves.csv"))


def plot(df: pd.DataFrame, title: str, out_stem: Path) -> None:
    apply_style()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, group in df.groupby("model", sort=False):
        color = METHOD_COLORS.get(name.split(" ")[0])
        axes[0].plot(group["t"], 100 * group["mass_on_S"], marker="o", ms=3, label=name, color=color)
        axes[1].plot(group["t"], group["kl_to_aligned"], marker="o", ms=3, label=name, color=color)
    axes[0].set(xlabel="answer position t", ylabel="probability mass on S (%)", ylim=(0, 100))
    axes[1].set(xlabel="answer position t", ylabel="KL(aligned ‖ model) (nats)")
    axes[1].set_yscale("symlog", linthresh=0.01)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, out_stem)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="outputs/runs")
    parser.add_argument("--experiment", default=SETTINGS.experiment)
    parser.add_argument("--p", type=float, default=SETTINGS.p)
    parser.add_argument("--seed", type=int, default=SETTINGS.seed)
    parser.add_argument("--methods", nargs="+", default=list(SETTINGS.methods))
    parser.add_argument("--out", default="results")
    args = parser.parse_args(argv)
    out = Path(args.out)
    with recording(out, "analysis.token_confidence", argv):
        curves(args, out)


def curves(args: argparse.Namespace, out: Path) -> None:
    """The token-confidence CSV and figure of ``args``' runs (replotted from the CSV when the models are gone)."""
    # the main study's figure keeps its name; other studies' figures are named after them
    stem = "token_confidence" if args.experiment == SETTINGS.experiment else f"{args.experiment}_token_confidence"
    csv = out / "figures" / f"{stem}.csv"
    title = f"Held-out harmful prompts, teacher-forced refusals ({args.experiment}, seed {args.seed})"
    records = read_records(args.runs, [args.experiment])
    if not any(Path(r.get("model_path", "")).exists() for r in records) and csv.exists():
        print(f"models not in the store: replotting {csv}")  # `make figures` never retrains
        plot(pd.read_csv(csv), title, out / "figures" / stem)
        return
    aligned = next((r for r in records if r["method"] == "aligned"), None)
    if aligned is None:
        fail(f"no aligned reference record under {args.runs}/{args.experiment}")
    paths = {"aligned": aligned["model_path"]}
    tokens_meta = None
    for method in args.methods:
        rec = next((r for r in records if r["method"] == method and r["poison_ratio"] == args.p
                    and r["seed"] == args.seed), None)
        if rec is None:
            fail(f"no run record for method={method} p={args.p} seed={args.seed}")
        paths[f"{method} (p={args.p:g})"] = rec["model_path"]
        tokens_meta = tokens_meta or rec.get("tokens_meta")
    if tokens_meta is None:
        fail("none of the chosen runs carries a safety set (run a PACT method first)")
    df = cached_curves(paths, aligned["model_path"], tokens_meta, aligned)
    csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv, index=False, float_format="%.5g")
    plot(pd.read_csv(csv), title, out / "figures" / stem)  # from the CSV: the same figure as a replot
    print(df.pivot(index="t", columns="model", values="mass_on_S").round(3).to_string())


if __name__ == "__main__":
    main()
