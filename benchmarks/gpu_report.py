"""Merge the step JSONs of ``benchmarks/gpu.sh`` into ``$OUT/gpu.json`` and ``$OUT/gpu.md``.

Reads from ``--out``: ``run.json`` (written by gpu.sh: dry run or not, setup, data), ``env.json``
(device, torch, date), ``steps.jsonl`` (one line per finished step: exit status, seconds, time
budget) and each step's own JSON; writes one JSON with everything and one markdown file with a
header and one table per step. A step that failed (non-zero exit, time limit, no JSON) is
marked ``failed`` with its reason and the tail of its log; whatever JSON it left is still shown.
Called after every step (an interim report survives a killed run) and with ``--final`` at the end.

    python benchmarks/gpu_report.py --out bench-out/gpu [--final]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STEPS = {  # name -> (json file, title)
    "train_step": ("train_step.json", "Training step, epoch and fold per method (benchmarks/train_step.py)"),
    "mr_table": ("mr_table.json", "MR table on the IEMOCAP-4 stand-in store (benchmarks/fusion_mr_table.py)"),
    "extract": ("extract.json", "Extraction throughput vs the decode-only ceiling (benchmarks/extract_throughput.py)"),
    "predict": ("predict.json", "Predict latency (benchmarks/predict_latency.py)"),
}
STANDIN_LINE = "stand-in data: IEMOCAP-4 store with RAVDESS/FER2013 stand-in audio/video"


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def f(v: Any, spec: str = ".2f", dash: str = "-") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return dash
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |")
    return out


def log_tail(out: Path, log: str | None, n: int = 12) -> list[str]:
    if not log:
        return []
    try:
        lines = (out / log).read_text(errors="replace").splitlines()
    except OSError:
        return []
    return lines[-n:]


# ----------------------------------------------------------------------------- per step
def md_train_step(d: dict) -> list[str]:
    data = d.get("data", {})
    cfg = d.get("config", {})
    lines = [
        f"data: {data.get('source')} ({data.get('utterances')} utterances, {data.get('dialogues')} dialogues, dims {data.get('dims')}); "
        f"{cfg.get('warmup')} warm-up + {cfg.get('steps')} timed steps per stage; fold = {cfg.get('fold_epochs')} epochs, "
        f"no early stopping; compile backend {cfg.get('compile_backend', 'inductor')}"
        + ("" if d.get("finished", True) else "; **unfinished** (the step was stopped: runs below are the finished ones)"),
        "",
    ]
    rows = []
    notes = []
    for r in d.get("results", []):
        fold = r.get("fold") or {}
        sd = r.get("sync_debug")
        if sd is None:
            sync_cell, per_epoch = "-", "-"
        elif not sd.get("checked"):
            sync_cell, per_epoch = "n/a (not CUDA)", "-"
        else:
            sync_cell = "raised" if sd.get("raised") else "no sync"
            per_epoch = f"{sd.get('syncs_per_epoch')} / {sd.get('warn_epoch_batches')} batches"
            if sd.get("raised"):
                notes.append(f"- {r['method']}, compile={r['compile']}: sync-debug error at `{sd.get('site')}`: {sd.get('error')}")
            for site, n in (sd.get("sync_sites") or {}).items():
                notes.append(f"- {r['method']}, compile={r['compile']}: {n} sync(s) per epoch at `{site}`")
        stages = list((r.get("stages") or {}).items()) or [("-", {})]
        for i, (stage, s) in enumerate(stages):
            ps = (fold.get("per_stage") or {}).get(stage, {})
            epoch = ps.get("epoch_s_median")
            epoch_cell = f(epoch, ".4f") if epoch is not None else (f"~{f(ps.get('epoch_s_estimated'), '.4f')}" if ps.get("epoch_s_estimated") else "-")
            first = i == 0
            fold_cell = ""
            if first and fold:
                fold_cell = f(fold.get("projected_seconds"), ".1f") + ("" if fold.get("complete") else f" (projected from {fold.get('epochs_run')} epochs)")
            rows.append([
                r["method"] if first else "", str(r["compile"]) if first else "", stage,
                f"{r.get('params', 0):,}" if first and r.get("params") else "",
                s.get("batches_per_epoch", "-"), f(s.get("warmup_s")), f(s.get("step_ms_median"), ".3f"), f(s.get("step_ms_p90"), ".3f"),
                f(ps.get("first_epoch_s"), ".3f"), epoch_cell, fold_cell,
                sync_cell if first else "", per_epoch if first else "",
            ])
        if r.get("error"):
            notes.append(f"- {r['method']}, compile={r['compile']}: ERROR {r['error'][:300]}")
        if r.get("skipped"):
            notes.append(f"- {r['method']}, compile={r['compile']}: skipped ({r['skipped']})")
    lines += table(
        ["method", "compile", "stage", "params", "batches/epoch", "warm-up s", "step ms (median)", "step ms (p90)",
         "1st epoch s", "epoch s (median)", f"fold s ({cfg.get('fold_epochs')} ep)", "sync-debug epoch", "syncs (warn mode)"],
        rows,
    )
    if notes:
        lines += ["", *notes]
    return lines


def md_mr_table(d: list) -> list[str]:
    if not isinstance(d, list) or not d:
        return ["(no results)"]
    methods = [r.get("method", "?") for r in d]
    proto_rows: dict[str, dict] = {}
    order: list[str] = []
    for r in d:
        for row in r.get("rows", []):
            name = f"MR {row['missing_rate']:.1f}" if row.get("condition") is None else "{" + ",".join(row["condition"]) + "}"
            if name not in proto_rows:
                proto_rows[name] = {}
                order.append(name)
            proto_rows[name][r.get("method")] = row
    lines = []
    for r in d:
        tc = r.get("train_config", {})
        lines.append(
            f"- {r.get('method')}: {r.get('epochs_run')} epochs ({tc.get('protocol')}, lr {tc.get('lr')}, patience {tc.get('patience')}), "
            f"{r.get('steps')} optimiser steps, train {f(r.get('seconds'), '.1f')} s ({f(r.get('epochs_per_second'), '.2f')} epochs/s), "
            f"eval {f(r.get('eval_seconds'), '.1f')} s on {r.get('device')}, {r.get('params', 0):,} params"
        )
    lines.append("")
    head = ["protocol"] + [h for m in methods for h in (f"{m} WA %", f"{m} UA %")]
    rows = []
    for name in order:
        cells = [name]
        for m in methods:
            row = proto_rows[name].get(m)
            if row is None:
                cells += ["-", "-"]
                continue
            cells.append(f"{100 * row['WA']:.2f} ± {100 * row.get('WA_std', 0):.2f}")
            cells.append(f"{100 * row['UA']:.2f} ± {100 * row.get('UA_std', 0):.2f}")
        rows.append(cells)
    return lines + table(head, rows)


def _modality(name: str) -> str | None:
    n = name.lower()
    if "egemaps" in n or "wav2vec" in n:
        return "audio"
    if "minilm" in n or "deberta" in n:
        return "text"
    if "faceprint" in n or "ma-net" in n or "manet" in n:
        return "video"
    return None


def md_extract(d: dict) -> list[str]:
    dec = {r["name"]: r for r in d.get("decode_rows", [])}
    ceiling = {"audio": None, "video": None, "all": None}
    for name, r in dec.items():
        if "audio only" in name:
            ceiling["audio"] = r
        elif "frames only" in name:
            ceiling["video"] = r
        elif "audio+frames" in name:
            ceiling["all"] = r
    scale = d.get("paper_scale", "real")
    lines = [
        f"{d.get('clips')} clips, {d.get('clip_seconds_total')} s of media; decode {d.get('decode', {})}; paper stack: "
        + ("**TINY random-init models (dry run)**" if scale == "tiny" else "random-init models of the real sizes (timing only, features meaningless)"),
        "",
    ]
    rows = []

    def add(group: str, r: dict, ceil_row: dict | None) -> None:
        ceil = ceil_row.get("x_realtime") if ceil_row else None
        ratio = (r.get("x_realtime") / ceil) if (ceil and r.get("x_realtime")) else None
        rows.append([group, r["name"], r.get("n"), f(r.get("seconds"), ".3f"), f(r.get("ms_per_utt"), ".1f"), f(r.get("utt_per_s")),
                     f(r.get("x_realtime")), f(r.get("frames_per_s"), ".1f"), f(ceil), f(ratio, ".2f")])

    for r in d.get("decode_rows", []):
        add("decode only", r, None)
    for group, key in (("offline backend", "backend_rows"), ("paper stack", "paper_rows")):
        for r in d.get(key, []):
            mod = _modality(r["name"])
            add(group, r, ceiling.get(mod) if mod in ("audio", "video") else None)
    for r in d.get("extract_features_rows", []):  # a cache-hit run decodes nothing: no ceiling
        add("extract_features", r, None if "cache hit" in r["name"] else ceiling["all"])
    lines += table(["group", "what", "n", "wall s", "ms/utt", "utt/s", "x RT", "frames/s", "decode-only x RT (ceiling)", "x RT / ceiling"], rows)
    paper = d.get("paper_rows") or []
    if paper and ceiling["all"]:
        ms = ceiling["all"]["ms_per_utt"] + sum(r["ms_per_utt"] for r in paper)
        clip_s = d.get("clip_seconds_total", 0) / max(d.get("clips", 1), 1)
        lines += ["", f"paper stack end to end, serial estimate (decode audio+frames+text + the three models per utterance): "
                      f"{ms:.1f} ms/utt = {1000 * clip_s / ms:.2f} x RT, against the decode-only ceiling of "
                      f"{ceiling['all']['x_realtime']} x RT measured in the same run"]
    return lines


def md_predict(d: dict) -> list[str]:
    lines = []
    for key in ("train_offline", "train_paper"):
        t = d.get(key)
        if t:
            lines.append(f"- {key.replace('train_', '')} bundle: store extracted in {t.get('extract_seconds')} s, concat trained "
                         f"{t.get('epochs')} epochs in {t.get('train_seconds')} s, {t.get('params', 0):,} params")
    if d.get("paper_scale") == "tiny":
        lines.append("- paper bundle: **TINY random-init models (dry run)**")
    lines.append("")
    rows = []
    for b in d.get("bundles", []):
        short = "paper stack" if "paper" in b.get("bundle", "") else ("offline" if "offline" in b.get("bundle", "") else b.get("bundle", "?"))
        for mode, w in b.get("warm", {}).items():
            cold = (b.get("cold", {}).get(mode) or [None])[0]
            clip_total = b.get("clip_seconds_total") or 0
            rows.append([
                short, mode,
                f(cold.get("wall")) if cold else "-", f(cold.get("load")) if cold else "-", f(cold.get("predict")) if cold else "-",
                f(w.get("median"), ".3f"), f(w.get("p90"), ".3f"), f(w.get("median_decode_extract"), ".3f"),
                w.get("batch_n"), f(w.get("batch_utt_per_s")), f(clip_total / w["batch_seconds"] if w.get("batch_seconds") else None),
            ])
    return lines + table(["bundle", "mode", "cold start s", "cold Predictor() s", "cold 1st predict s", "warm median s",
                          "warm p90 s", "warm decode+extract s", "batch n", "batch utt/s", "batch x RT"], rows)


RENDER = {"train_step": md_train_step, "mr_table": md_mr_table, "extract": md_extract, "predict": md_predict}


# ----------------------------------------------------------------------------- merge
def collect(out: Path, final: bool) -> dict:
    run = load_json(out / "run.json") or {}
    env = load_json(out / "env.json") or {}
    done: dict[str, dict] = {}
    try:
        for line in (out / "steps.jsonl").read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["step"]] = rec
    except (OSError, ValueError):
        pass
    steps = {}
    for name, (fname, title) in STEPS.items():
        rec = dict(done.get(name) or {})
        result = load_json(out / fname)
        if not rec:
            status, reason = ("failed", "not run") if final else ("pending", "")
        elif rec.get("skipped"):
            status, reason = "failed", f"skipped: {rec['skipped']}"
        elif rec.get("timed_out"):
            status, reason = "failed", f"stopped at its time budget ({rec.get('budget_s')} s)"
        elif rec.get("rc") != 0:
            status, reason = "failed", f"exit status {rec.get('rc')}"
        elif result is None:
            status, reason = "failed", f"no {fname} written"
        else:
            status, reason = "ok", ""
        steps[name] = {"status": status, "reason": reason, "title": title, **rec, "result": result}
    return {"run": run, "env": env, "note": STANDIN_LINE, "steps": steps, "final": final}


def render_md(rep: dict, out: Path) -> str:
    run, env = rep["run"], rep["env"]
    dry = run.get("dry_run")
    lines = ["# imer GPU benchmarks" + (" — DRY RUN (CPU, toy sizes: the figures mean nothing)" if dry else ""), ""]
    dev = env.get("device_name", "?")
    if env.get("gpu"):
        dev += f" ({env['gpu']})"
    lines += [
        f"- device: {dev}",
        f"- torch {env.get('torch', '?')}" + (f", CUDA {env['cuda']}" if env.get("cuda") else "") + f", python {env.get('python', '?')}",
        f"- date: {env.get('date', '?')}" + (f"; commit {env['commit']}" if env.get("commit") else ""),
        f"- {STANDIN_LINE}",
        f"- data used: store {run.get('store') or '-'}; clips {run.get('clips') or '-'}",
        f"- setup: {run.get('setup', '?')}" + (f" in {run['setup_s']} s" if run.get("setup_s") else ""),
        f"- paper models: {run.get('paper_models', '?')}",
    ]
    if run.get("total_s") is not None:
        lines.append(f"- total: {run['total_s']} s (script deadline {run.get('deadline_s')} s)")
    parts = []
    for name, s in rep["steps"].items():
        t = f" {s.get('seconds')} s of {s.get('budget_s')} s" if s.get("seconds") is not None else ""
        parts.append(f"{name} **{s['status']}**{t}" + (f" ({s['reason']})" if s.get("reason") else ""))
    lines += ["- steps: " + "; ".join(parts), ""]
    for name, s in rep["steps"].items():
        lines += [f"## {s['title']}", ""]
        if s["status"] == "failed":
            lines += [f"**FAILED**: {s['reason']}", ""]
            tail = log_tail(out, s.get("log"))
            if tail:
                lines += ["```", *tail, "```", ""]
        elif s["status"] == "pending":
            lines += ["(not run yet)", ""]
        if s.get("result") is not None:
            try:
                lines += RENDER[name](s["result"])
            except Exception as e:  # noqa: BLE001 - a malformed step JSON must not lose the report
                lines.append(f"(could not render {name}: {type(e).__name__}: {e})")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--final", action="store_true", help="steps that never ran count as failed")
    ap.add_argument("--total-s", type=float, default=None)
    ap.add_argument("--print", action="store_true", help="print gpu.md")
    args = ap.parse_args(argv)
    if args.total_s is not None:
        run = load_json(args.out / "run.json") or {}
        run["total_s"] = round(args.total_s)
        (args.out / "run.json").write_text(json.dumps(run, indent=2))
    rep = collect(args.out, args.final)
    (args.out / "gpu.json").write_text(json.dumps(rep, indent=2, default=str))
    md = render_md(rep, args.out)
    (args.out / "gpu.md").write_text(md)
    if args.print:
        print(md)
    failed = [n for n, s in rep["steps"].items() if s["status"] == "failed"]
    return 1 if (args.final and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
