"""Benchmark: train fusion methods on the IEMOCAP-4 stand-in store and print the MR table.

Prints, per method: WA / UA (mean ± std over evaluation-mask seeds) at missing rates 0.0-0.7 and
the seven fixed conditions, the achieved missing rate, wall time, epochs/s, optimiser steps, the
device, and per training stage the best epoch and whether it fell in the last 10 % of the stage
(a sign of under-training). Methods are compared at convergence: every setting defaults to
imer's own TrainConfig (early stopping on validation, patience 30), the same for each method,
and each method trains at its declared learning rate (`imer methods`) unless --lr is given.
Selection uses the store's own validation split (on the stand-in store: dialogues whose
stand-ins come from sources training never uses).

    python benchmarks/fusion_mr_table.py                                # CPU, imer's defaults (mixed MR 0.0-0.7 training)
    python benchmarks/fusion_mr_table.py --train-missing-rate 0.3       # the paper's protocol: one training MR
    python benchmarks/fusion_mr_table.py --device cuda --epochs 300 --patience 0   # the official run length
    python benchmarks/fusion_mr_table.py --per-rate                     # one model per MR (paper protocol)
    python benchmarks/fusion_mr_table.py --methods momke --per-condition   # MoMKE Table 2: one model per condition
    python benchmarks/fusion_mr_table.py --methods momke --per-condition --selection test   # ... as the official code selects
    python benchmarks/fusion_mr_table.py --methods momke --ablations   # MoMKE Table 3 rows (one mixed-MR model each)
    python benchmarks/fusion_mr_table.py --methods mculora             # MCULoRA: one model, 7 conditions + MR table, DPFT plot
    python benchmarks/fusion_mr_table.py --methods mculora --ablations # ... and its no-MCLA / no-DPFT rows

Audio and video in this store are STAND-INS (eGeMAPS of RAVDESS / HOG of FER2013 faces with
the same emotion; see build_iemocap_standin.py). Text is real (MiniLM on IEMOCAP transcripts).
Figures from it are not comparable to the ComP paper's IEMOCAP numbers, which use wav2vec /
DeBERTa / MA-Net features of the real recordings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imer.store import is_store, load_store  # noqa: E402
from imer.fusion.experiment import run_experiment  # noqa: E402
from imer.fusion.missing import CONDITIONS, MISSING_RATES  # noqa: E402
from imer.devices import resolve_device  # noqa: E402
from imer.fusion.trainer import TrainConfig  # noqa: E402


def run_one(method: str, fs, train_rate: float | None, args, condition: str | None = None) -> dict:
    options = json.loads(args.options) if args.options else {}
    base = TrainConfig()
    cfg = TrainConfig(
        epochs=args.epochs or base.epochs,
        lr=args.lr,  # None: the method's declared rate
        batch_size=args.batch_size,
        batch_mode=args.batch_mode,
        patience=base.patience if args.patience is None else (args.patience or None),
        seed=args.seed,
        device=args.device,
        missing_rate=train_rate,
        condition=condition,
        selection=args.selection,
    )
    t0 = time.perf_counter()
    res = run_experiment(
        fs, method, cfg, options,
        rates=(train_rate,) if args.per_rate else () if condition else MISSING_RATES,
        conditions=() if args.per_rate else (condition,) if condition else CONDITIONS,
        mask_seeds=tuple(range(args.mask_seeds)),
    )
    total = time.perf_counter() - t0
    extra = {}
    if getattr(res.model, "dpft_history", None):  # MCULoRA: combination probabilities per epoch
        extra["dpft_history"] = res.model.dpft_history
    return {
        **extra,
        **res.summary(),
        "train_config": {"epochs": cfg.epochs, "lr": res.train.lr, "patience": cfg.patience, "protocol": cfg.protocol().name},
        "train_missing_rate": train_rate,
        "eval_seconds": round(total - res.train.seconds, 2),
        "rows": res.rows,
    }


# ComP Table 3 rows: (KP, PG, Cr, GM); all off = encoders concatenated.
ABLATION_ROWS = [
    (False, False, False, False),
    (True, False, False, False),
    (True, True, False, False),
    (True, True, True, False),
    (False, True, True, True),
    (True, False, True, True),
    (True, True, False, True),
    (True, True, True, True),
]


# MoMKE paper, Table 2 (IEMOCAP-4, WA/UA %, one model per condition, test-selected) and Table 3
# (ablations, same protocol); methods-notes §2.6. Keys: the condition ("a" ... "atv").
MOMKE_PAPER = {
    "MoMKE": {"a": (70.32, 71.38), "t": (77.82, 78.37), "v": (58.60, 54.70), "av": (68.85, 67.65),
              "at": (79.89, 79.53), "tv": (77.87, 77.84), "atv": (80.13, 79.99)},
    "no expert pre-training": {"a": (67.89, 68.56), "t": (75.30, 76.54), "v": (56.97, 53.09), "av": (66.58, 65.91),
                               "at": (77.36, 77.93), "tv": (76.99, 76.81), "atv": (77.62, 77.47)},
    "no mixing": {"a": (67.88, 67.91), "t": (75.74, 75.34), "v": (56.87, 53.37), "av": (66.65, 65.46),
                  "at": (77.25, 78.33), "tv": (76.99, 76.93), "atv": (77.17, 77.80)},
    "no router": {"a": (68.32, 69.03), "t": (76.22, 76.30), "v": (57.00, 53.70), "av": (67.10, 66.32),
                  "at": (78.78, 78.53), "tv": (77.00, 77.21), "atv": (78.78, 78.23)},
}
# ComP paper Table 1: the ComP authors' re-run of MoMKE under random MR 0.1-0.7 (IEMOCAP-4, Acc/UA).
MOMKE_RANDOM_MR = {0.1: (76.70, 75.80), 0.2: (75.25, 74.02), 0.3: (73.47, 72.59), 0.4: (71.42, 70.25),
                   0.5: (69.73, 68.95), 0.6: (67.95, 66.60), 0.7: (66.52, 65.53)}
MOMKE_ABLATIONS = {
    "MoMKE": {},
    "no expert pre-training": {"pretrain_experts": False},
    "no mixing": {"mixing": False},
    "no router": {"router": "uniform"},
}
TABLE2_ORDER = ("a", "t", "v", "av", "at", "tv")  # the paper's columns; Avg = mean of these six
# MCULoRA paper, Table 1 and its ablation table (IEMOCAP-4, WA/UA %, one model for all seven
# conditions, test-selected; methods-notes §3.5). Its own "Avg" is over all 7 conditions.
MCULORA_PAPER = {
    "MCULoRA": {"a": (67.30, 68.66), "t": (75.27, 75.75), "v": (55.68, 52.52), "av": (71.94, 72.06),
                "at": (79.96, 81.29), "tv": (76.98, 77.71), "atv": (80.75, 81.96)},
    "no MCLA": {"a": (58.72, 61.71), "t": (74.56, 74.40), "v": (52.28, 49.77), "av": (66.62, 65.24),
                "at": (78.89, 79.33), "tv": (75.73, 74.46), "atv": (79.19, 78.69)},
    "no DPFT": {"a": (55.41, 58.38), "t": (73.61, 73.88), "v": (53.54, 50.49), "av": (68.77, 68.23),
                "at": (79.44, 80.36), "tv": (76.94, 76.54), "atv": (80.05, 81.42)},
}
MCULORA_ABLATIONS = {"MCULoRA": {}, "no MCLA": {"use_mcla": False}, "no DPFT": {"use_dpft": False}}


def condition_table(by_cond: dict[str, tuple[float, float]], paper: dict | None = None) -> str:
    """The seven-condition table (WA/UA), six-condition average as the paper computes it."""
    head = f"{'':<10}" + "".join(f"{'{' + ','.join(c) + '}':>13}" for c in TABLE2_ORDER) + f"{'Avg(6)':>13}{'{a,t,v}':>13}"
    def line(name: str, vals: dict) -> str:
        cells = [f"{vals[c][0]:>6.2f}/{vals[c][1]:<6.2f}" if c in vals else f"{'-':>13}" for c in TABLE2_ORDER]
        six = [vals[c] for c in TABLE2_ORDER if c in vals]
        avg = f"{sum(v[0] for v in six) / len(six):>6.2f}/{sum(v[1] for v in six) / len(six):<6.2f}" if len(six) == 6 else f"{'-':>13}"
        last = f"{vals['atv'][0]:>6.2f}/{vals['atv'][1]:<6.2f}" if "atv" in vals else f"{'-':>13}"
        return f"{name:<10}" + "".join(cells) + avg + last
    out = [head, line("imer", by_cond)]
    if paper:
        out.append(line("paper", paper))
    return "\n".join(out)


def expert_load(rows: list[dict]) -> str:
    """MoMKE's router weights per condition: input modality -> (audio, text, video) experts."""
    lines = []
    for r in rows:
        load = r.get("summary", {}).get("expert_load")
        if not load:
            continue
        name = f"MR {r['missing_rate']:.1f}" if r["condition"] is None else "{" + ",".join(r["condition"]) + "}"
        cells = "  ".join(f"{m[0]}->" + "/".join(f"{load[m][e]:.2f}" for e in ("audio", "text", "video")) for m in load)
        lines.append(f"  {name:<8} {cells}")
    return ("expert load (input -> weight of the a/t/v experts):\n" + "\n".join(lines)) if lines else ""


def run_per_condition(method: str, fs, args, results: list, label: str = "") -> dict[str, tuple[float, float]]:
    """One model per fixed condition, trained and tested under it (MoMKE's Table 2 protocol)."""
    by_cond = {}
    for cond in CONDITIONS:
        res = run_one(method, fs, None, args, condition=cond)
        res["per_condition"] = cond
        res["variant"] = label or method
        results.append(res)
        row = res["rows"][0]
        by_cond[cond] = (100 * row["WA"], 100 * row["UA"])
        print(f"  [{label or method} trained and tested on {{{','.join(cond)}}}] WA {by_cond[cond][0]:.2f} UA {by_cond[cond][1]:.2f}; "
              f"{res['epochs_run']} epochs, {res['steps']} steps, {res['seconds']:.0f} s; {convergence(res)}")
    return by_cond


def run_method_ablations(method: str, variants: dict[str, dict], paper: dict[str, dict], fs, args, results: list) -> None:
    """A method's ablation rows, each one model under --train-missing-rate (default: mixed MR),
    evaluated on the seven conditions and the MR table, the paper's row beside each."""
    base = json.loads(args.options) if args.options else {}
    trained = f"MR {args.train_missing_rate:.1f}" if args.train_missing_rate is not None else "mixed MR 0.0-0.7"
    print(f"\n[{method} ablations] one model per row, trained under {trained}, evaluated on every condition and MR")
    for name, opts in variants.items():
        if args.skip_full and not opts:
            continue
        args.options = json.dumps({**base, **opts})
        res = run_one(method, fs, args.train_missing_rate, args)
        res["ablation"] = name
        results.append(res)
        conds = {r["condition"]: (100 * r["WA"], 100 * r["UA"]) for r in res["rows"] if r["condition"] is not None}
        mr = {r["missing_rate"]: 100 * r["WA"] for r in res["rows"] if r["condition"] is None}
        print(f"\n  {name}: {res['epochs_run']} epochs, {res['steps']} steps, {res['seconds']:.0f} s; {convergence(res)}")
        print("  " + condition_table(conds, paper[name]).replace("\n", "\n  "))
        print("  WA at MR 0.0/0.3/0.5/0.7: " + " / ".join(f"{mr[r]:.2f}" for r in (0.0, 0.3, 0.5, 0.7)))
        report_mculora(res, args, name.replace(" ", "-").lower())  # prints nothing for other methods
    args.options = json.dumps(base)


def plot_dpft(history: list[dict], path: Path, title: str) -> str:
    """DPFT's combination probabilities over epochs as a PNG (matplotlib, headless)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: pip install 'imer[plots]' (matplotlib)"
    epochs = [h["epoch"] + 1 for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for combo in history[0]["probs"]:
        ax.plot(epochs, [h["probs"][combo] for h in history], label="{" + ",".join(combo) + "}")
    ax.axhline(1 / 7, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("epoch of the adapt stage")
    ax.set_ylabel("sampling probability")
    ax.set_title(title)
    ax.legend(ncol=4, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def report_mculora(res: dict, args, label: str) -> None:
    history = res.get("dpft_history") or []
    if not history:
        return
    first, last = history[0]["probs"], history[-1]["probs"]
    print("  DPFT probabilities (first -> last epoch of adapt): "
          + ", ".join(f"{{{','.join(c)}}} {first[c]:.3f}->{last[c]:.3f}" for c in first))
    out = (args.json_out.parent if args.json_out else ROOT / "bench-out") / f"dpft-{label}.png"
    print("  " + plot_dpft(history, out, f"MCULoRA DPFT ({label}; stand-in store)"))


def run_ablations(fs, args, results: list) -> None:
    """Train comp once per Table-3 row at --train-missing-rate; WA per evaluation MR."""
    base = json.loads(args.options) if args.options else {}
    show = (0.0, 0.1, 0.3, 0.5, 0.7)
    print(f"\n[comp ablations] trained at {'MR %.1f' % args.train_missing_rate if args.train_missing_rate is not None else 'mixed MR'}; WA (%) at evaluation MR")
    print(" KP PG Cr GM  " + " ".join(f"{r:>6.1f}" for r in show) + "   train s")
    for kp, pg, cr, gm in ABLATION_ROWS:
        args.options = json.dumps({**base, "use_kp": kp, "use_pg": pg, "use_cr": cr, "use_gm": gm})
        res = run_one("comp", fs, args.train_missing_rate, args)
        res["ablation"] = {"use_kp": kp, "use_pg": pg, "use_cr": cr, "use_gm": gm}
        results.append(res)
        wa = {r["missing_rate"]: r["WA"] for r in res["rows"] if r["condition"] is None}
        marks = " ".join("●" if x else "○" for x in (kp, pg, cr, gm))
        print(f" {marks}  " + " ".join(f"{100 * wa[r]:>6.2f}" for r in show) + f"   {res['seconds']:.0f}")
    args.options = json.dumps(base)


def convergence(res: dict) -> str:
    """Per stage: best epoch of the stage's budget, and LATE when it fell in the last 10 %."""
    parts = []
    for stage, b in res["best"].items():
        flag = "  LATE (last 10 %: under-trained?)" if b.get("late") else ""
        parts.append(f"{stage}: best epoch {b['epoch'] + 1} of {b.get('epochs', '?')} (ran {b.get('ran', '?')}){flag}")
    return "; ".join(parts)


def fmt(rows: list[dict]) -> str:
    lines = [f"{'protocol':<10} {'MR ach.':>7} {'WA':>14} {'UA':>14}"]
    for r in rows:
        name = f"MR {r['missing_rate']:.1f}" if r["condition"] is None else "{" + ",".join(r["condition"]) + "}"
        lines.append(
            f"{name:<10} {r['achieved_missing_rate']:>7.3f} "
            f"{100 * r['WA']:>7.2f} ± {100 * r['WA_std']:<4.2f} {100 * r['UA']:>7.2f} ± {100 * r['UA_std']:<4.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=ROOT / "bench-out" / "iemocap4-standin")
    ap.add_argument("--methods", default="concat,comp")
    ap.add_argument("--train-missing-rate", type=float, default=None, help="one MR for training (paper protocol); default: imer's mixed 0.0-0.7")
    ap.add_argument("--per-rate", action="store_true", help="train one model per MR 0.1..0.7 and test it at that MR")
    ap.add_argument("--epochs", type=int, default=None, help="default: imer's TrainConfig")
    ap.add_argument("--lr", type=float, default=None, help="default: imer's TrainConfig")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--batch-mode", default=None, choices=[None, "dialogue", "utterance"])
    ap.add_argument("--patience", type=int, default=None, help="default: imer's TrainConfig (30); 0 = run every epoch")
    ap.add_argument("--selection", default="valid", choices=["valid", "test"])
    ap.add_argument("--mask-seeds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--options", default="", help="JSON of method options, applied to every method")
    ap.add_argument("--ablations", action="store_true", help="Table 3 of the method: comp's KP/PG/Cr/GM rows, or momke's (no pre-training, no mixing, no router) with --methods momke")
    ap.add_argument("--skip-full", action="store_true", help="--ablations: leave out the full model's row (already trained under the same settings)")
    ap.add_argument("--per-condition", action="store_true", help="train one model per fixed condition and test it there (MoMKE's Table 2 protocol)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not is_store(args.store):
        sys.exit(f"{args.store}: no feature store; build it first with: python benchmarks/build_iemocap_standin.py")
    fs = load_store(args.store)
    standins = [m for m, e in fs.specs.items() if e is not None and e.config.get("standin")]
    dev = resolve_device(args.device)
    print(f"store: {args.store}  ({len(fs)} utterances, dims {fs.dims})")
    print(f"device: {dev}" + (f" ({__import__('torch').cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    if standins:
        print(f"NOTE: {', '.join(standins)} features are STAND-INS, not IEMOCAP recordings: " + "; ".join(fs.specs[m].config.get("note", "") for m in standins))
    print(f"selection on: {args.selection}" + ("  (official protocol: optimistic)" if args.selection == "test" else ""))
    results = []
    if args.ablations:
        if args.methods.split(",") == ["momke"]:  # the paper trains one model per condition; here one per row
            run_method_ablations("momke", MOMKE_ABLATIONS, MOMKE_PAPER, fs, args, results)
        elif args.methods.split(",") == ["mculora"]:
            run_method_ablations("mculora", MCULORA_ABLATIONS, MCULORA_PAPER, fs, args, results)
        else:
            run_ablations(fs, args, results)
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(results, indent=2, default=str))
        return
    if args.per_condition:
        print("one model per condition, trained and tested under it; compared at convergence (same TrainConfig, early stopping)")
        for method in args.methods.split(","):
            print(f"\n[{method}] seven condition-matched models (WA/UA %)")
            by_cond = run_per_condition(method, fs, args, results)
            paper = MOMKE_PAPER["MoMKE"] if method == "momke" else None
            print(condition_table(by_cond, paper))
            if paper:
                print("paper: MoMKE Table 2, IEMOCAP-4 real wav2vec/DeBERTa/MA-Net features, 5-fold, test-selected; "
                      "imer: this store (stand-in audio/video), its own test split, selected on " + args.selection)
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(results, indent=2, default=str))
        return
    rates = [r for r in MISSING_RATES if r > 0] if args.per_rate else [args.train_missing_rate]
    print("compared at convergence: each method trains with the same TrainConfig and early stopping on validation")
    for method in args.methods.split(","):
        per_method_rows = []
        for rate in rates:
            res = run_one(method, fs, rate, args)
            results.append(res)
            per_method_rows += res["rows"]
            print(
                f"\n[{method}] trained under {res['train_config']['protocol']} (lr {res['train_config']['lr']:g}, "
                f"patience {res['train_config']['patience']}): {res['epochs_run']} epochs, {res['steps']} optimiser steps "
                f"in {res['seconds']:.1f} s ({res['epochs_per_second']:.2f} epochs/s) on {res['device']}, "
                f"{res['params']:,} params, eval {res['eval_seconds']:.1f} s"
            )
            print(f"  convergence: {convergence(res)}")
            if not args.per_rate:
                print(fmt(res["rows"]))
                load = expert_load(res["rows"])
                if load:
                    print(load)
                if method == "mculora":
                    conds = {r["condition"]: (100 * r["WA"], 100 * r["UA"]) for r in res["rows"] if r["condition"] is not None}
                    print(condition_table(conds, MCULORA_PAPER["MCULoRA"]))
                    print("  paper: MCULoRA Table 1, IEMOCAP-4 real features, one model for all conditions, test-selected "
                          "(its own Avg is over all 7; the table here averages the 6 incomplete ones as MoMKE's)")
                    report_mculora(res, args, "mculora")
                if method == "momke" and rate is None:
                    print("  beside: ComP paper Table 1, MoMKE re-run under random MR (real IEMOCAP features; one model per MR), WA/UA: "
                          + ", ".join(f"{r:.1f} {a:.2f}/{u:.2f}" for r, (a, u) in MOMKE_RANDOM_MR.items()))
        if args.per_rate:
            print(f"\n[{method}] one model per MR, each tested at its own MR:")
            print(fmt(per_method_rows))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json_out}")


if __name__ == "__main__":
    main()
