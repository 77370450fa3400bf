"""Benchmark: speaker-independent speech emotion recognition on real RAVDESS speech.

Data: ``../shared/data/ravdess-speech`` (RAVDESS speech, actors 01-18, 8 emotions, 16 kHz FLAC;
file name ``03-01-EE-II-SS-RR-AA.flac``: EE emotion, SS statement, AA actor). Protocol: train on
actors 01-14, test on actors 15-18, whose voices are never seen in training (actors 19-24 are not
in the shared copy). Every utterance is its own "dialogue".

Features: the offline defaults through :func:`imer.workflows.extract_store`, as a user with a
manifest would run them: eGeMAPSv02 functionals (88-d) for audio, and MiniLM for the transcript,
which is one of the two fixed RAVDESS statements known from SS ("Kids are talking by the door" /
"Dogs are sitting by the door"; it carries no emotion). There is no video (video off). Stores and
the feature cache live under ``bench-out/ravdess-speakers/``: a rerun loads them instantly.

Rows of the table:

* ``LR (eGeMAPS)``: StandardScaler + LogisticRegression(max_iter=2000) on the same eGeMAPS
  vectors, C chosen by speaker-grouped CV (GroupKFold over the training actors only);
* ``concat`` and ``comp`` trained with imer's DEFAULT ``TrainConfig`` and default method options
  (whatever the library defaults are when this runs) through
  :func:`imer.fusion.experiment.run_experiment`, one model per seed, tested at MR 0.0 (every
  present stream); WA / UA mean ± std over seeds, parameters, optimiser steps, best epoch per
  stage (``*`` = in the last 10 % of the stage), training wall time.

    python benchmarks/ravdess_speakers.py --threads 1                       # default: seeds 0,1,2, with text
    python benchmarks/ravdess_speakers.py --text both --json-out bench-out/ravdess-speakers/run.json
    python benchmarks/ravdess_speakers.py --methods concat --set hidden=64 --set dropout=0.3
    python benchmarks/ravdess_speakers.py --lr 3e-4 --epochs 200 --train weight_decay=1e-3 --train batch_size=64
    python benchmarks/ravdess_speakers.py --valid-actors 13,14              # hold out whole actors for selection
    python benchmarks/ravdess_speakers.py --mr-table                        # the full MR / condition table too
    python benchmarks/ravdess_speakers.py --text off --folds 4              # 4 test groups of 4 actors: 960 test utterances

``--set`` takes method options (``--set comp.hidden=64`` for one method only); ``--train`` takes any
``TrainConfig`` field (``--train val_by=dialogues``, ``--train patience=null``). Nothing is tuned
inside the script: with no flags every setting is the library's default.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from extract_throughput import ROOT, device_info, finish, loadavg  # noqa: E402  (puts the repo on sys.path, HF offline)

_REL = Path("data") / "ravdess-speech"
_CANDIDATES = [ROOT.parent / "shared" / _REL, ROOT / "shared" / _REL]
DATA = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0])
OUT = ROOT / "bench-out" / "ravdess-speakers"

EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
TRAIN_ACTORS = tuple(f"{i:02d}" for i in range(1, 15))
TEST_ACTORS = tuple(f"{i:02d}" for i in range(15, 19))
# --folds 4: the test group rotates over these (each trains on the other 14 actors), so the
# figure rests on 960 test utterances of 16 voices instead of 240 of 4 (a binomial standard
# error of about 1.6 points instead of 3.2 at 45 % accuracy).
FOLD_TEST_ACTORS = [TEST_ACTORS] + [tuple(f"{i:02d}" for i in range(a, a + 4)) for a in (11, 7, 3)]
NAME = re.compile(r"^03-01-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.flac$")
DATA_LINE = "DATA: RAVDESS speech (real), speakers 15-18 unseen"


# ----------------------------------------------------------------------------- data
def build_manifest(data: Path, out_csv: Path) -> Path:
    """manifest.csv (id, path, transcript, label, speaker, split) from the file names alone."""
    rows = []
    for f in sorted(data.glob("Actor_*/*.flac")):
        m = NAME.match(f.name)
        if not m:
            continue
        emo, _intensity, stmt, _rep, actor = m.groups()
        split = "train" if actor in TRAIN_ACTORS else "test" if actor in TEST_ACTORS else None
        if split is None:
            continue
        rows.append({"id": f.stem, "path": str(f.resolve()), "transcript": STATEMENTS[stmt],
                     "label": EMOTIONS[emo], "speaker": f"actor{actor}", "split": split})
    if not rows:
        sys.exit(f"ravdess_speakers: no RAVDESS speech files under {data} (expected Actor_NN/03-01-*.flac; "
                 f"looked in {' and '.join(map(str, _CANDIDATES))}; see /work/shared/data/CATALOG.md)")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out_csv)
    return out_csv


def load_or_extract(manifest: Path, with_text: bool, refresh: bool, device: str):
    """The feature store of one variant: loaded when it exists and matches the manifest, else extracted."""
    from imer.extractors.run import OFFLINE_DEFAULTS, ExtractConfig
    from imer.pipeline.ingest import read_manifest
    from imer.store import is_store, load_store
    from imer.types import Modality
    from imer.workflows import extract_store

    utts = read_manifest(manifest)
    store = OUT / ("store-audio-text" if with_text else "store-audio")
    if not refresh and is_store(store):
        fs = load_store(store)
        if fs.ids == [u.id for u in utts] and fs.splits == [u.split for u in utts]:
            return fs, {"store": str(store), "loaded": True}
    backends = dict(OFFLINE_DEFAULTS)
    backends[Modality.VIDEO] = None  # audio-only recordings: nothing to extract
    if not with_text:
        backends[Modality.TEXT] = None
    t = time.perf_counter()
    fs, summary = extract_store(utts, store, ExtractConfig(backends=backends, device=device, cache_dir=OUT / ".cache"))
    info = {"store": str(store), "loaded": False, "extract_seconds": round(time.perf_counter() - t, 1),
            "cache_hits": summary.cache_hits, "extracted": summary.extracted, "present": summary.present,
            "missing": summary.missing}
    print(f"  extracted {store.name}: {len(fs)} utterances in {info['extract_seconds']} s "
          f"(cache hits {summary.cache_hits}, extracted {summary.extracted}, present {summary.present})")
    return fs, info


def with_valid_actors(fs, actors: list[str]):
    """Training rows of ``actors`` moved to the data's own 'valid' split (selection on unseen voices)."""
    if not actors:
        return fs
    names = {a if a.startswith("actor") else f"actor{int(a):02d}" for a in actors}
    bad = names - {s for s, sp in zip(fs.speakers, fs.splits) if sp == "train"}
    if bad:
        sys.exit(f"--valid-actors: {sorted(bad)} are not training actors ({TRAIN_ACTORS[0]}-{TRAIN_ACTORS[-1]})")
    return fs.with_splits(["valid" if sp == "train" and s in names else sp for s, sp in zip(fs.speakers, fs.splits)])


# ----------------------------------------------------------------------------- LR baseline
def lr_baseline(fs, folds: int, grid: list[float]) -> dict:
    """StandardScaler + LogisticRegression on the audio (eGeMAPS) rows; C by GroupKFold over actors."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t = time.perf_counter()
    x, y = fs.feats["audio"], np.asarray(fs.labels)
    tr = np.array([s in ("train", "valid") for s in fs.splits]) & fs.present[:, 0]
    te = np.array([s == "test" for s in fs.splits]) & fs.present[:, 0]
    groups = np.array(fs.speakers)[tr]
    cv = GroupKFold(n_splits=min(folds, len(set(groups))))

    def model(c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))

    scores = {c: float(np.mean(cross_val_score(model(c), x[tr], y[tr], groups=groups, cv=cv, scoring="accuracy"))) for c in grid}
    best_c = max(grid, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    clf = model(best_c).fit(x[tr], y[tr])
    pred = clf.predict(x[te])
    return {"method": "LR (eGeMAPS)", "C": best_c, "cv_WA": scores, "folds": cv.get_n_splits(),
            "WA": float(accuracy_score(y[te], pred)), "UA": float(balanced_accuracy_score(y[te], pred)),
            "params": int(clf[-1].coef_.size + clf[-1].intercept_.size), "train": int(tr.sum()), "test": int(te.sum()),
            "seconds": round(time.perf_counter() - t, 2)}


# ----------------------------------------------------------------------------- fusion methods
def method_options(pairs: list[str], method: str, all_methods: list[str]) -> dict:
    """``--set`` items for ``method``: unprefixed ones, and ``method.KEY=...`` ones."""
    from imer.config import parse_set

    mine = [p for p in pairs if p.split("=", 1)[0].split(".")[0] not in set(all_methods) - {method}]
    return parse_set(mine, scope=method)


def train_config(args, seed: int):
    from imer.config import from_dict, parse_set
    from imer.fusion.train_config import TrainConfig

    over: dict[str, Any] = parse_set(args.train)
    if args.epochs is not None:
        over["epochs"] = args.epochs
    if args.lr is not None:
        over["lr"] = args.lr
    over.update(seed=seed, device=args.device)
    cfg = from_dict(TrainConfig, over)
    cfg.validate()
    return cfg


def selection_info(fs, cfg) -> dict:
    """Which rows the library holds out for model selection under ``cfg`` (reported, not changed)."""
    from imer.fusion.experiment import prepare_splits

    split, name = prepare_splits(fs, cfg)
    rows = [i for i, s in enumerate(split.splits) if s == name]
    spk = sorted({split.speakers[i] for i in rows})
    shared = spk and set(spk) & {split.speakers[i] for i, s in enumerate(split.splits) if s == "train"}
    return {"split": name, "utterances": len(rows), "speakers": spk if len(spk) <= 4 else len(spk),
            "speakers_also_in_train": bool(shared)}


def run_method(fs, method: str, seed: int, args) -> dict:
    from imer.fusion.experiment import run_experiment
    from imer.fusion.missing import CONDITIONS, MISSING_RATES

    cfg = train_config(args, seed)
    options = method_options(args.set, method, args.methods)
    sel = selection_info(fs, cfg)
    t = time.perf_counter()
    res = run_experiment(
        fs, method, cfg, options,
        rates=MISSING_RATES if args.mr_table else (0.0,),
        conditions=CONDITIONS if args.mr_table else (),
        mask_seeds=(0, 1, 2) if args.mr_table else (0,),  # MR 0.0 is deterministic: one mask
    )
    wall = time.perf_counter() - t
    row0 = next(r for r in res.rows if r["condition"] is None and r["missing_rate"] == 0.0)
    s = res.summary()
    return {
        "method": method, "seed": seed, "WA": row0["WA"], "UA": row0["UA"], "F1": row0.get("F1"),
        "params": s["params"], "steps": s["steps"], "epochs_run": s["epochs_run"],
        "best": {k: {kk: v[kk] for kk in ("epoch", "epochs", "ran", "late", "metrics")} for k, v in s["best"].items()},
        "train_seconds": s["seconds"], "seconds": round(wall, 2), "warnings": s["warnings"], "selection": sel,
        "train_config": dataclasses.asdict(cfg), "options": options,
        "method_config": dataclasses.asdict(res.model.config) if dataclasses.is_dataclass(getattr(res.model, "config", None)) else None,
        "rows": res.rows if args.mr_table else [row0],
    }


def aggregate(runs: list[dict]) -> dict:
    import numpy as np

    wa = np.array([r["WA"] for r in runs])
    ua = np.array([r["UA"] for r in runs])
    stages = list(runs[0]["best"])
    best = {st: [(r["best"][st]["epoch"] + 1, r["best"][st]["epochs"], r["best"][st]["late"]) for r in runs] for st in stages}
    return {"method": runs[0]["method"], "seeds": [r["seed"] for r in runs],
            "WA": float(wa.mean()), "WA_std": float(wa.std()), "UA": float(ua.mean()), "UA_std": float(ua.std()),
            "params": runs[0]["params"], "steps": [r["steps"] for r in runs], "best": best,
            "late_any": any(r["best"][st]["late"] for r in runs for st in stages),
            "seconds": float(np.mean([r["seconds"] for r in runs])), "selection": runs[0]["selection"]}


# ----------------------------------------------------------------------------- printing
def _best_text(best: dict) -> str:
    parts = []
    for st, vals in best.items():
        n = vals[0][1]
        parts.append(f"{st[:3]} " + ",".join(f"{e}{'*' if late else ''}" for e, _, late in vals) + f"/{n}")
    return "; ".join(parts)


def _steps_text(steps: list[int]) -> str:
    return str(steps[0]) if len(set(steps)) == 1 else f"{min(steps)}-{max(steps)}"


def print_table(title: str, lr: dict, aggs: list[dict]) -> None:
    head = f"{'method':<16} {'WA %':>13} {'UA %':>13} {'params':>9} {'steps':>11}  {'best epochs (per seed; * = last 10 %)':<40} {'s/seed':>7}"
    print(f"\n{title}")
    print(head)
    print("-" * len(head))
    lr_note = f"C={lr['C']:g} ({lr['folds']}-fold GroupKFold over actors)"
    print(f"{lr['method']:<16} {100 * lr['WA']:>13.2f} {100 * lr['UA']:>13.2f} {lr['params']:>9,} {'-':>11}  "
          f"{lr_note:<40} {lr['seconds']:>7.1f}")
    for a in aggs:
        wa = f"{100 * a['WA']:.2f}±{100 * a['WA_std']:.2f}"
        ua = f"{100 * a['UA']:.2f}±{100 * a['UA_std']:.2f}"
        print(f"{a['method']:<16} {wa:>13} {ua:>13} {a['params']:>9,} {_steps_text(a['steps']):>11}  "
              f"{_best_text(a['best']):<40} {a['seconds']:>7.1f}")


def fmt_rows(rows: list[dict]) -> str:
    lines = [f"  {'protocol':<10} {'MR ach.':>7} {'WA':>14} {'UA':>14}"]
    for r in rows:
        name = f"MR {r['missing_rate']:.1f}" if r["condition"] is None else "{" + ",".join(r["condition"]) + "}"
        lines.append(f"  {name:<10} {r['achieved_missing_rate']:>7.3f} {100 * r['WA']:>7.2f} ± {100 * r['WA_std']:<4.2f} "
                     f"{100 * r['UA']:>7.2f} ± {100 * r['UA_std']:<4.2f}")
    return "\n".join(lines)


def library_state() -> dict:
    """Commit and uncommitted library files: the defaults measured are the working tree's."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.rstrip()  # not strip(): porcelain lines start with a space
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": [ln[3:] for ln in git("status", "--porcelain", "--", "imer").splitlines()]}


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="concat,comp")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    ap.add_argument("--text", default="on", choices=["on", "off", "both"],
                    help="include the statement transcripts (MiniLM): on, off (audio only) or both variants")
    ap.add_argument("--epochs", type=int, default=None, help="default: TrainConfig's")
    ap.add_argument("--lr", type=float, default=None, help="default: TrainConfig's")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="method option (comp.KEY=VALUE for one method only); repeatable")
    ap.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                    help="any TrainConfig field, e.g. weight_decay=1e-3, batch_size=64, patience=null; repeatable")
    ap.add_argument("--valid-actors", default="", help="training actors held out as the data's own 'valid' split, e.g. 13,14 "
                    "(default: none; the library then holds out its own validation split)")
    ap.add_argument("--folds", type=int, default=1, choices=[1, 2, 3, 4],
                    help="1: train 01-14, test 15-18 (the issue's split); k > 1: also rotate the 4 test actors "
                         "over 11-14, 07-10, 03-06 (each fold trains on the other 14) and report the mean over folds")
    ap.add_argument("--mr-table", action="store_true", help="evaluate the full MR 0.0-0.7 and condition table too")
    ap.add_argument("--skip-lr", action="store_true", help="skip the logistic-regression baseline")
    ap.add_argument("--lr-folds", type=int, default=7, help="GroupKFold splits over the 14 training actors")
    ap.add_argument("--lr-grid", default="1e-4,1e-3,1e-2,1e-1,1,10,100", help="C values for the LR baseline")
    ap.add_argument("--refresh", action="store_true", help="run extract_store again (the feature cache still applies)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)  # numpy / sklearn BLAS too (the LR baseline)
    from imer.devices import resolve_device
    from imer.fusion.train_config import TrainConfig

    device = str(resolve_device(args.device))
    t_all = time.perf_counter()
    info = device_info(device)
    base_cfg = train_config(args, seeds[0] if seeds else 0)
    defaults = dataclasses.asdict(TrainConfig())
    changed = {k: v for k, v in dataclasses.asdict(base_cfg).items() if k not in ("seed", "device") and v != defaults[k]}
    result: dict[str, Any] = {"benchmark": "ravdess_speakers", "data": DATA_LINE, "env": info, "loadavg_start": loadavg(),
                              "library": library_state(), "args": {k: v for k, v in vars(args).items()},
                              "train_config_changes": changed, "variants": {}}
    print(f"ravdess_speakers: {DATA}  (train actors {TRAIN_ACTORS[0]}-{TRAIN_ACTORS[-1]}, test {TEST_ACTORS[0]}-{TEST_ACTORS[-1]})")
    print(f"device: {info['device_name']}  [{device}]  torch {info['torch']}; library {result['library']['commit']}"
          + (f" + uncommitted {result['library']['dirty']}" if result["library"]["dirty"] else ""))
    print(f"TrainConfig: {'library defaults' if not changed else 'defaults except ' + json.dumps(changed, default=str)}; "
          f"method options: {'defaults' if not args.set else ' '.join(args.set)}; seeds {seeds}")

    manifest = build_manifest(DATA, OUT / "manifest.csv")
    variants = {"on": [True], "off": [False], "both": [True, False]}[args.text]
    valid_actors = [a for a in args.valid_actors.split(",") if a.strip()]
    lr = None
    for with_text in variants:
        tag = "audio+text" if with_text else "audio"
        fs_all, store_info = load_or_extract(manifest, with_text, args.refresh, device)
        fold_results = []
        for fold in range(args.folds):
            fs = with_valid_actors(with_test_actors(fs_all, FOLD_TEST_ACTORS[fold]), valid_actors)
            if args.folds > 1:
                print(f"\n=== fold {fold + 1}/{args.folds}: test actors {FOLD_TEST_ACTORS[fold][0]}-{FOLD_TEST_ACTORS[fold][-1]}")
                lr = None
            fold_results.append(run_fold(fs, tag, store_info, args, seeds, lr, FOLD_TEST_ACTORS[fold]))
            lr = fold_results[-1]["lr"]
        result["variants"][tag] = fold_results[0] if args.folds == 1 else {"folds": fold_results, "summary": fold_summary(fold_results)}
        if args.folds > 1:
            print_fold_summary(tag, fold_results, seeds)
    result["lr_baseline"] = lr
    return finish(result, args.json_out, t_all)


def with_test_actors(fs, actors: tuple[str, ...]):
    """Actors ``actors`` are the test split, every other actor trains."""
    names = {f"actor{a}" for a in actors}
    return fs.with_splits(["test" if s in names else "train" for s in fs.speakers])


def run_fold(fs, tag: str, store_info: dict, args, seeds: list[int], lr: dict | None, test_actors: tuple[str, ...]) -> dict:
    """The LR baseline and every method x seed on one train/test assignment of the actors."""
    counts = {s: fs.splits.count(s) for s in ("train", "valid", "test")}
    print(f"\n[{tag}] store {Path(store_info['store']).name} ({'loaded' if store_info['loaded'] else 'extracted'}): "
          f"{len(fs)} utterances {counts}, dims {fs.dims}, labels {list(fs.task.label_names)}")
    if lr is None and not args.skip_lr:
        lr = lr_baseline(fs, args.lr_folds, [float(c) for c in args.lr_grid.split(",")])
        print(f"  LR baseline: C={lr['C']:g} (CV WA {100 * lr['cv_WA'][lr['C']]:.2f} %), test WA {100 * lr['WA']:.2f} % UA {100 * lr['UA']:.2f} %")
    runs: dict[str, list[dict]] = {}
    for method in args.methods:
        for seed in seeds:
            r = run_method(fs, method, seed, args)
            runs.setdefault(method, []).append(r)
            sel = r["selection"]
            print(f"  [{method} seed {seed}] WA {100 * r['WA']:.2f} UA {100 * r['UA']:.2f}  {r['steps']} steps, "
                  f"{r['epochs_run']} epochs, {r['seconds']:.1f} s; best {_best_text({k: [(v['epoch'] + 1, v['epochs'], v['late'])] for k, v in r['best'].items()})}; "
                  f"selected on {sel['split']} ({sel['utterances']} utts, speakers {sel['speakers']}, "
                  f"{'voices also in train' if sel['speakers_also_in_train'] else 'unseen voices'})", flush=True)
            if args.mr_table:
                print(fmt_rows(r["rows"]))
    aggs = [aggregate(v) for v in runs.values()]
    lr_row = lr or {"method": "LR (skipped)", "WA": float("nan"), "UA": float("nan"), "params": 0, "C": float("nan"), "folds": 0, "seconds": 0.0}
    where = f"test {test_actors[0]}-{test_actors[-1]}, the other 14 train"
    print_table(f"RAVDESS speech, {where} ({tag}; MR 0.0; mean ± std over seeds {seeds})", lr_row, aggs)
    print(DATA_LINE)
    return {"store": store_info, "splits": counts, "dims": fs.dims, "runs": runs, "summary": aggs, "lr": lr,
            "test_actors": list(test_actors)}


def fold_summary(folds: list[dict]) -> dict:
    """Mean over folds (and seeds) per method, with the standard error over the fold x seed runs."""
    import numpy as np

    out: dict[str, dict] = {}
    lrs = [f["lr"] for f in folds if f["lr"]]
    if lrs:
        out["LR (eGeMAPS)"] = {"WA": float(np.mean([x["WA"] for x in lrs])), "UA": float(np.mean([x["UA"] for x in lrs])),
                               "per_fold_WA": [x["WA"] for x in lrs], "runs": len(lrs)}
    for method in folds[0]["runs"]:
        per_fold = [[r["WA"] for r in f["runs"][method]] for f in folds]
        flat = np.array([w for fw in per_fold for w in fw])
        ua = np.array([r["UA"] for f in folds for r in f["runs"][method]])
        out[method] = {"WA": float(flat.mean()), "WA_se": float(flat.std(ddof=1) / np.sqrt(len(flat))) if len(flat) > 1 else 0.0,
                       "UA": float(ua.mean()), "per_fold_WA": [float(np.mean(fw)) for fw in per_fold], "runs": int(len(flat))}
    return out


def print_fold_summary(tag: str, folds: list[dict], seeds: list[int]) -> None:
    summary = fold_summary(folds)
    groups = ", ".join(f"{f['test_actors'][0]}-{f['test_actors'][-1]}" for f in folds)
    print(f"\nRAVDESS speech, {len(folds)} folds of 4 unseen test actors ({groups}); {tag}; MR 0.0; seeds {seeds}")
    print(f"{'method':<16} {'WA % (mean)':>12} {'± s.e.':>7} {'UA %':>7}  per-fold WA %")
    for name, r in summary.items():
        se = f"{100 * r['WA_se']:.2f}" if "WA_se" in r else "-"
        print(f"{name:<16} {100 * r['WA']:>12.2f} {se:>7} {100 * r['UA']:>7.2f}  " + " ".join(f"{100 * w:.1f}" for w in r["per_fold_WA"]))
    print(DATA_LINE)


if __name__ == "__main__":
    sys.exit(main())
