"""Benchmark: prediction latency of a trained bundle on real talking-face clips.

Trains (or reuses, ``--model``) a small ``concat`` bundle on the 18 RAVDESS clips of
``../shared/data/av-clips/ravdess-actor01`` (offline extractors; few epochs: the point is latency,
not accuracy), then measures, for full streams, ``--no-video`` and text only:

* cold start: a new process (``python -c``) that constructs ``Predictor`` and predicts one clip;
  the subprocess wall time, and inside it the import, ``Predictor()`` and first-predict times;
* warm per-clip latency: one ``Predictor``, the 18 clips one at a time (median / p90 / max), with
  a breakdown from ``extract_features``' stage timings (decode+extract, store write, the rest =
  discovery, model forward, temp dirs);
* batched throughput: all 18 clips in one ``predict`` call.

Transcripts come from the manifest: the clips are symlinked into a temp folder next to ``.txt``
sidecars, so ``Predictor.predict(paths)`` finds them as a user's files would be found.

    python benchmarks/predict_latency.py                         # CPU, offline bundle
    python benchmarks/predict_latency.py --device cuda --paper-stack --json-out bench-out/predict_cuda.json

``--paper-stack`` adds a second bundle whose extractors are the random-init wav2vec2-large /
deberta-large / MA-Net of ``extract_throughput.py`` (timing only, features meaningless); it is
meant for the GPU run and runs on CPU only when asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from extract_throughput import (  # noqa: E402  (also puts the repository on sys.path, sets HF offline)
    finish,
    PAPER_BANNER,
    ROOT,
    build_paper_models,
    device_info,
    load1,
    load_utterances,
    loadavg,
    sync,
)

MODES: dict[str, tuple[str, ...]] = {
    "full (audio+text+video)": (),
    "--no-video": ("video",),
    "text only": ("audio", "video"),
}

COLD_CODE = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import numpy, torch
if int(sys.argv[6]) > 0:
    torch.set_num_threads(int(sys.argv[6]))
from imer.predict import Predictor
t1 = time.perf_counter()
p = Predictor(sys.argv[2], device=sys.argv[3])
if p.device.startswith("cuda"):
    torch.cuda.synchronize()
t2 = time.perf_counter()
r = p.predict([sys.argv[4]], disable=set(json.loads(sys.argv[5])))
t3 = time.perf_counter()
print("@@RESULT " + json.dumps({"import": t1 - t0, "load": t2 - t1, "predict": t3 - t2, "label": r[0].label}))
"""


# ----------------------------------------------------------------------------- data and model
def clips_with_sidecars(tmp: Path) -> tuple[Path, list[Path], list]:
    """Symlinks to the clips plus ``.txt`` transcripts from the manifest, in one folder."""
    utts = load_utterances()
    folder = tmp / "clips"
    folder.mkdir()
    paths = []
    for u in utts:
        link = folder / u.source.name
        link.symlink_to(u.source)
        (folder / (u.source.stem + ".txt")).write_text((u.transcript or "") + "\n")
        paths.append(link)
    return folder, paths, utts


def train_bundle(utts: list, out: Path, device: str, epochs: int, backends: dict | None = None,
                 options: dict | None = None, label: str = "offline") -> dict:
    from imer.extractors.run import ExtractConfig
    from imer.fusion.experiment import run_experiment
    from imer.fusion.trainer import TrainConfig
    from imer.workflows import extract_store

    kw: dict[str, Any] = {"device": device, "cache_dir": out.parent / f"cache-{label}"}
    if backends:
        kw["backends"] = backends
    if options:
        kw["options"] = options
    t = time.perf_counter()
    fs, summary = extract_store(utts, out.parent / f"store-{label}", ExtractConfig(**kw))
    t_ext = time.perf_counter() - t
    t = time.perf_counter()
    res = run_experiment(fs, "concat", TrainConfig(epochs=epochs, device=device, patience=None), out=out, evaluate=False)
    t_train = time.perf_counter() - t
    info = {"extract_seconds": round(t_ext, 2), "train_seconds": round(t_train, 2), "epochs": epochs,
            "present": summary.present, "load1": load1(), "params": res.summary()["params"]}
    print(f"  [{label}] store: {len(fs)} utterances in {t_ext:.1f} s (present {summary.present}); "
          f"concat trained {epochs} epochs in {t_train:.1f} s (load1 {load1()}) -> {out}")
    return info


# ----------------------------------------------------------------------------- measurements
def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def cold_start(model: Path, clip: Path, device: str, disable: tuple[str, ...], threads: int) -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", COLD_CODE, str(ROOT), str(model), device, str(clip), json.dumps(list(disable)), str(threads)],
        capture_output=True, text=True, env=env, cwd=str(ROOT),
    )
    wall = time.perf_counter() - t
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"cold-start subprocess failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    inner = json.loads(line.split(" ", 1)[1])
    return {"wall": wall, **inner, "rest": wall - inner["import"] - inner["load"] - inner["predict"], "load1": load1()}


class StageRecorder:
    """Wraps ``imer.extractors.run.extract_features`` to keep each call's summary (no change to imer)."""

    def __init__(self) -> None:
        import imer.extractors.run as run

        self.run = run
        self.orig = run.extract_features
        self.last: Any = None
        self.wall = 0.0

        def wrapped(*a: Any, **k: Any):
            t = time.perf_counter()
            extraction = self.orig(*a, **k)
            self.wall = time.perf_counter() - t
            self.last = extraction.summary
            return extraction

        run.extract_features = wrapped

    def restore(self) -> None:
        self.run.extract_features = self.orig


def warm_latency(predictor: Any, clips: list[Path], folder: Path, disable: tuple[str, ...], rec: StageRecorder,
                 device: str) -> dict:
    per, dec, store, other = [], [], [], []
    for clip in clips:
        sync(device)
        t = time.perf_counter()
        predictor.predict([clip], disable=set(disable))
        sync(device)
        wall = time.perf_counter() - t
        st = rec.last.stage_seconds
        per.append(wall)
        dec.append(st.get("decode+extract", 0.0))
        store.append(st.get("compile", 0.0) + st.get("hash+lookup", 0.0))
        other.append(wall - dec[-1] - store[-1])
    sync(device)
    t = time.perf_counter()
    res = predictor.predict([folder], disable=set(disable))
    sync(device)
    batch = time.perf_counter() - t
    bst = rec.last.stage_seconds
    return {
        "n": len(clips),
        "median": statistics.median(per),
        "p90": pct(per, 0.9),
        "max": max(per),
        "mean": statistics.fmean(per),
        "median_decode_extract": statistics.median(dec),
        "median_hash_cache_store": statistics.median(store),
        "median_other": statistics.median(other),
        "load1_per_clip": load1(),
        "batch_n": len(res),
        "batch_seconds": batch,
        "batch_utt_per_s": len(res) / batch,
        "batch_stage_seconds": bst,
        "load1_batch": load1(),
    }


def measure_bundle(name: str, model: Path, clips: list[Path], folder: Path, device: str, cold_runs: int,
                   threads: int, durations: float, cold_modes: int | None = None) -> dict:
    from imer.predict import Predictor

    out: dict[str, Any] = {"bundle": name, "model": str(model), "cold": {}, "warm": {}}
    # cold starts first, while nothing of this bundle is loaded in this process
    for mode, disable in list(MODES.items())[:cold_modes]:
        runs = [cold_start(model, clips[0], device, disable, threads) for _ in range(cold_runs)]
        out["cold"][mode] = runs
    sync(device)
    t = time.perf_counter()
    predictor = Predictor(model, device=device)
    sync(device)
    out["predictor_init_in_process"] = {"seconds": time.perf_counter() - t, "load1": load1()}
    predictor.predict([clips[0]])  # warm-up: first-call init (CUDA kernels, lazy imports)
    rec = StageRecorder()
    try:
        for mode, disable in MODES.items():
            out["warm"][mode] = warm_latency(predictor, clips, folder, disable, rec, device)
    finally:
        rec.restore()
    out["clip_seconds_total"] = durations
    return out


def print_bundle(r: dict) -> None:
    print(f"\n== bundle: {r['bundle']}  ({r['model']})")
    print("\n  cold start: new process, Predictor(...) + predict(1 clip)")
    head = f"    {'mode':<26} {'wall s':>7} {'imports':>8} {'Predictor()':>12} {'1st predict':>12} {'py start/exit':>14} {'load1':>6}"
    print(head)
    print("    " + "-" * (len(head) - 4))
    for mode, runs in r["cold"].items():
        for k, c in enumerate(runs):
            tag = mode if k == 0 else f"  (run {k + 1})"
            print(f"    {tag:<26} {c['wall']:>7.2f} {c['import']:>8.2f} {c['load']:>12.2f} {c['predict']:>12.2f} "
                  f"{c['rest']:>14.2f} {c['load1']:>6.2f}")
    pi = r["predictor_init_in_process"]
    print(f"    (Predictor() in the benchmark process: {pi['seconds']:.2f} s, load1 {pi['load1']:.2f}; "
          "imports are warm only if a bundle was trained in this process)")
    print("\n  warm: same Predictor; per clip = 18 calls of one clip; batch = one call with all 18")
    head = (f"    {'mode':<26} {'median s':>8} {'p90 s':>7} {'max s':>7} {'dec+ext':>8} {'hash/cache/store':>16} "
            f"{'other':>7} {'load1':>6} | {'batch s':>8} {'utt/s':>7} {'x RT':>7} {'load1':>6}")
    print(head)
    print("    " + "-" * (len(head) - 4))
    for mode, w in r["warm"].items():
        print(f"    {mode:<26} {w['median']:>8.3f} {w['p90']:>7.3f} {w['max']:>7.3f} {w['median_decode_extract']:>8.3f} "
              f"{w['median_hash_cache_store']:>16.3f} {w['median_other']:>7.3f} {w['load1_per_clip']:>6.2f} | "
              f"{w['batch_seconds']:>8.2f} {w['batch_utt_per_s']:>7.2f} {r['clip_seconds_total'] / w['batch_seconds']:>7.2f} "
              f"{w['load1_batch']:>6.2f}")
    print("    (dec+ext, hash/cache/store: medians of extract_features' stage timings; other = the rest of predict():"
          " discovery, temp dirs, standardise + model forward)")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    ap.add_argument("--model", default=None, help="reuse this bundle (made from the offline extractors) instead of training one")
    ap.add_argument("--epochs", type=int, default=20, help="concat training epochs (latency does not depend on them)")
    ap.add_argument("--cold-runs", type=int, default=1, help="cold-start subprocesses per mode")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads here and in the cold-start processes (0: torch's default)")
    ap.add_argument("--paper-stack", action="store_true",
                    help="also a bundle on random-init wav2vec2-large/deberta-large/MA-Net (for the GPU run; slow on CPU)")
    ap.add_argument("--models-dir", default=None, help="keep/reuse the random-init models here (default: a temp dir)")
    ap.add_argument("--json-out", default=None, help="write every figure to this JSON file")
    ap.add_argument("--cold-modes", type=int, default=None,
                    help="cold-start only the first N modes (default: all 3; the GPU script uses 1 when short of time)")
    ap.add_argument("--clips", default=None, help="clip folder with a manifest.csv (default: ../shared/data/av-clips/ravdess-actor01)")
    ap.add_argument("--paper-scale", default="real", choices=["real", "tiny"],
                    help="tiny: 4-layer width-32 wav2vec2/DeBERTa (CPU dry runs only)")
    args = ap.parse_args(argv)
    if args.clips:
        import extract_throughput

        extract_throughput.set_data_dir(args.clips)

    import torch

    from imer.devices import resolve_device
    from imer.pipeline.media import probe
    from imer.types import Modality

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    info = device_info(device)
    result: dict[str, Any] = {"env": info, "loadavg_start": loadavg(), "bundles": []}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="imer-bench-predict-") as tmp_s:
        tmp = Path(tmp_s)
        folder, clips, utts = clips_with_sidecars(tmp)
        total = sum(float(probe(c).duration or 0.0) for c in clips)
        print(f"predict_latency: {len(clips)} clips, {total:.1f} s of media; transcripts as .txt sidecars in {folder}")
        print(f"device: {info['device_name']}  [{device}]  torch {info['torch']}")
        print(f"load average at start (1/5/15 min): {loadavg()}   (load1 columns: 1-min load average after each timing)")

        bundles: list[tuple[str, Path]] = []
        if args.model:
            bundles.append(("given (--model)", Path(args.model)))
        else:
            model = tmp / "model-offline"
            result["train_offline"] = train_bundle(utts, model, device, args.epochs)
            bundles.append(("offline defaults: egemaps + minilm + faceprint, concat", model))
        ctx = None
        if args.paper_stack:
            print(f"\n  paper stack: {PAPER_BANNER}")
            ctx = tempfile.TemporaryDirectory(prefix="imer-paper-models-") if args.models_dir is None else None
            opts = build_paper_models(Path(ctx.name) if ctx else Path(args.models_dir), scale=args.paper_scale)
            result["paper_scale"] = args.paper_scale
            backends = {Modality.AUDIO: "wav2vec2", Modality.TEXT: "deberta", Modality.VIDEO: "manet"}
            model = tmp / "model-paper"
            result["train_paper"] = train_bundle(utts, model, device, args.epochs, backends, opts, label="paper")
            bundles.append((f"paper stack (wav2vec2-large + deberta-large + MA-Net), concat; {PAPER_BANNER}", model))
        try:
            for name, model in bundles:
                r = measure_bundle(name, model, clips, folder, device, args.cold_runs, args.threads, total, args.cold_modes)
                print_bundle(r)
                result["bundles"].append(r)
        finally:
            if ctx:
                ctx.cleanup()

    return finish(result, args.json_out, t_all)


if __name__ == "__main__":
    sys.exit(main())
