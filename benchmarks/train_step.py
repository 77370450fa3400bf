"""Benchmark: training-step, epoch and fold time of every fusion method, compiled and not.

Per method (default: every registered one) and per ``TrainConfig(compile=...)`` setting, on the
IEMOCAP-4 stand-in store (or a synthetic store of IEMOCAP's shape, ``--synthetic``):

(a) the training step: a hand loop that mirrors the inner step of ``imer.fusion.trainer.fit``
    (batch building, autocast forward, loss, backward, gradient clip, optimiser step — fused Adam
    on CUDA), per training stage; median / p90 ms over ``--steps`` steps after ``--warmup``
    steps (the warm-up time is reported too: with compile it is mostly compilation), with
    ``torch.cuda.synchronize()`` around every timed step on CUDA;
(b) one epoch and (c) a full fold: ``imer.fusion.trainer.fit`` itself, with ``--fold-epochs``
    epochs (default 300, the official protocol) and no early stopping; per-epoch times come
    from fit's progress events (first epoch = warm-up/compilation, then the median per stage).
    A fold that would pass its share of ``--budget-s`` stops early and is extrapolated from its
    median epoch (marked ``"complete": false``);
(d) on CUDA: one training epoch of the hand loop under ``torch.cuda.set_sync_debug_mode("error")``
    (whether a host-device synchronisation raised, and where), then the same epoch under
    ``"warn"`` listing every synchronising call site.

The model is built as ``imer.fusion.experiment.run_experiment`` builds it (validation split,
normaliser fitted on train, seed, ``build_method`` with the training split's longest dialogue).

    python benchmarks/train_step.py --device cuda --json-out bench-out/gpu/train_step.json
    python benchmarks/train_step.py --synthetic --dialogues 12 --mean-len 6 --fold-epochs 2 --steps 3 --warmup 1
    python benchmarks/train_step.py --synthetic --dialogues 12 --mean-len 6 --save-synthetic /tmp/tiny-store
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

DEFAULT_STORE = ROOT / "bench-out" / "iemocap4-standin"


# ----------------------------------------------------------------------------- data
def synthetic_store(n_dialogues: int = 151, mean_len: int = 37, dims: tuple[int, int, int] = (88, 384, 900),
                    n_test: int | None = None, classes: int = 4, seed: int = 0):
    """A FeatureSet of IEMOCAP-4's shape: dialogues of ~``mean_len`` utterances (two speakers,
    F/M alternating), 4 classes with a class-dependent mean per modality, the last ~20 % of the
    dialogues in test (IEMOCAP: 120 train / 31 test), about 10 % of the streams missing."""
    from imer.store import FeatureSet, FeatureSpec
    from imer.types import MODALITY_NAMES, TaskKind, TaskSpec

    rng = np.random.default_rng(seed)
    dim = dict(zip(MODALITY_NAMES, dims))
    n_test = int(round(n_dialogues * 31 / 151)) if n_test is None else n_test
    n_test = min(max(n_test, 1), n_dialogues - 2)
    centres = {m: rng.normal(size=(classes, d)).astype(np.float32) for m, d in dim.items()}
    lengths = np.clip(rng.poisson(mean_len, n_dialogues), 2, None)
    ids, dlg, spk, order, split, labels = [], [], [], [], [], []
    for k, n in enumerate(lengths):
        sp = "test" if k >= n_dialogues - n_test else "train"
        for i in range(int(n)):
            ids.append(f"D{k:03d}_{i:03d}")
            dlg.append(f"D{k:03d}")
            spk.append("F" if i % 2 == 0 else "M")
            order.append(i)
            split.append(sp)
            labels.append(int(rng.integers(classes)))
    n = len(ids)
    y = np.asarray(labels, dtype=np.int64)
    present = rng.random((n, 3)) > 0.1
    feats = {}
    for j, m in enumerate(MODALITY_NAMES):
        x = centres[m][y] + 1.5 * rng.standard_normal((n, dim[m]), dtype=np.float32)
        x[~present[:, j]] = 0.0
        feats[m] = x.astype(np.float32)
    reasons = np.where(present, "present", "no_feature").astype(object)
    return FeatureSet(
        ids=ids, feats=feats, present=present, reasons=reasons, labels=y,
        task=TaskSpec(TaskKind.CLASSIFICATION, ("happy", "sad", "neutral", "angry")),
        speakers=spk, dialogues=dlg, order=np.asarray(order, dtype=np.int64), splits=split,
        specs={m: FeatureSpec(name="synthetic", dim=dim[m], config={"synthetic": True, "seed": seed}) for m in MODALITY_NAMES},
    )


# ----------------------------------------------------------------------------- helpers
def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def env_info(device) -> dict:
    import torch

    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = f"CPU ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    return info


def prepare(fs, method: str, cfg, options: dict | None):
    """Split, normalise, seed and build exactly as ``run_experiment`` does."""
    from imer.fusion.base import build_method
    from imer.fusion.data import Normalizer
    from imer.fusion.experiment import prepare_splits
    from imer.fusion.trainer import seed_everything

    cfg.validate()
    fs, sel_name = prepare_splits(fs, cfg)
    train_split = fs.split("train")
    normalizer = Normalizer.fit(train_split)
    data = normalizer.apply(fs)
    max_len = max((len(g) for g in train_split.dialogue_groups()), default=1)
    seed_everything(cfg.seed)
    model = build_method(method, fs.dims, fs.task, options, {"max_dialogue_len": max_len, "batch_mode": cfg.batch_mode})
    return model, data.split("train"), data.split(sel_name), sel_name


class StepLoop:
    """fit()'s inner step for one stage, batch after batch, epoch after epoch (same masks, same
    generator seeds, same optimiser), so single steps can be timed."""

    def __init__(self, method, train_fs, cfg, device, stage: str, step_model, first_epoch: int = 0):
        import torch

        from imer.devices import autocast
        from imer.fusion.data import TensorData
        from imer.fusion.evaluation import default_batch_size
        from imer.fusion.missing import MaskSchedule
        from imer.fusion.trainer import make_optimizer, stage_protocol

        self.torch = torch
        self.method, self.train_fs, self.cfg, self.device, self.stage = method, train_fs, cfg, device, stage
        self.train = TensorData(train_fs, device)
        self.mode = cfg.batch_mode or method.default_batch_mode
        self.bs = cfg.batch_size or default_batch_size(self.mode, self.train.mean_dialogue_len)
        self.step_model = step_model
        self.autocast_ctx, amp_dtype = autocast(device, cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        method.begin_stage(stage)
        protocol = stage_protocol(method, stage, cfg)
        self.schedule = None if protocol is None else MaskSchedule(protocol, cfg.seed, train_fs.present)
        groups = [g for g in method.param_groups(cfg.weight_decay) if g["params"]]
        self.params = [p for g in groups for p in g["params"]]
        self.opt = make_optimizer(method, groups, cfg, device)
        self.epoch = 0
        self.global_epoch = first_epoch
        self.sums: dict[str, Any] = {}
        self._it = None
        method.train()

    def batches_per_epoch(self) -> int:
        return self.train.num_batches(self.mode, self.bs)

    def epoch_batches(self):
        """The batches of the next epoch, built lazily as fit builds them (mask, generator, iterate)."""
        torch = self.torch
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 104729, self.global_epoch, 1])
        own = self.method.draw_train_mask(self.stage, self.epoch, self.train_fs.present, rng)
        if own is not None:
            mask = torch.from_numpy(np.asarray(own, dtype=bool))
        elif self.schedule is not None:
            mask = torch.from_numpy(self.schedule.train_mask(self.train.n, self.global_epoch))
        else:
            mask = None
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + self.global_epoch)
        self.epoch += 1
        self.global_epoch += 1
        return self.train.iterate(self.mode, self.bs, shuffle=True, generator=gen, protocol_mask=mask, bucket=cfg.bucket)

    def next_batch(self):
        while True:
            if self._it is None:
                self._it = self.epoch_batches()
            try:
                return next(self._it)
            except StopIteration:
                self._it = None

    def step(self, batch) -> None:
        torch = self.torch
        with self.autocast_ctx:
            out = self.step_model(batch)
            losses = self.method.loss(out, batch)
        total = losses["total"]
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True)
        self.scaler.step(self.opt)
        self.scaler.update()
        for k, v in losses.items():  # as fit: stays on the device
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()

    def run_epoch(self) -> int:
        """One whole epoch (batch building included), as fit's loop body; returns the batch count."""
        self._it = None
        nb = 0
        for batch in self.epoch_batches():
            self.step(batch)
            nb += 1
        return nb


def time_steps(loop: StepLoop, warmup: int, steps: int) -> dict:
    dev = loop.device
    sync(dev)
    t = time.perf_counter()
    for _ in range(warmup):
        loop.step(loop.next_batch())
    sync(dev)
    warm_s = time.perf_counter() - t
    times = []
    for _ in range(steps):
        sync(dev)
        t = time.perf_counter()
        loop.step(loop.next_batch())  # batch building is part of the step, as in fit's loop
        sync(dev)
        times.append(1000 * (time.perf_counter() - t))
    return {
        "batches_per_epoch": loop.batches_per_epoch(),
        "batch_size": loop.bs,
        "batch_mode": loop.mode,
        "warmup_steps": warmup,
        "warmup_s": round(warm_s, 3),
        "steps": steps,
        "step_ms_median": round(statistics.median(times), 3) if times else None,
        "step_ms_p90": round(pct(times, 0.9), 3) if times else None,
        "step_ms_min": round(min(times), 3) if times else None,
    }


def _site(stack: list) -> str:
    """The innermost frame of imer's own code (else of benchmarks/) in a stack summary."""
    def rel(fr, folder: str) -> str | None:
        try:
            return Path(fr.filename).resolve().relative_to(ROOT / folder).as_posix()
        except (ValueError, OSError):
            return None

    for fr in reversed(stack):
        r = rel(fr, "imer")
        if r is not None:
            return f"imer/{r}:{fr.lineno} ({fr.name}: {(fr.line or '').strip()[:80]})"
    for fr in reversed(stack):
        r = rel(fr, "benchmarks")
        if r is not None:
            return f"benchmarks/{r}:{fr.lineno} ({fr.name}: {(fr.line or '').strip()[:80]})"
    fr = stack[-1] if stack else None
    return f"{fr.filename}:{fr.lineno}" if fr else "?"


def sync_debug_epoch(loop: StepLoop) -> dict:
    """One epoch under set_sync_debug_mode("error"), then one under "warn" (every site listed).

    Off CUDA (``--sync-debug always``, the CPU dry run) the mode switch is a no-op: the same
    epochs run, nothing can be detected (``"checked": false``)."""
    torch = loop.torch
    checked = loop.device.type == "cuda"

    def set_mode(mode: str) -> None:
        if checked:
            torch.cuda.set_sync_debug_mode(mode)

    out: dict[str, Any] = {"mode": "error", "checked": checked, "raised": False, "error": None, "site": None}
    sync(loop.device)
    set_mode("error")
    try:
        out["batches"] = loop.run_epoch()
    except Exception as e:  # noqa: BLE001 - the point is to record it
        out["raised"] = True
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        out["site"] = _site(traceback.extract_tb(e.__traceback__))
    finally:
        set_mode("default")
    sync(loop.device)
    sites: dict[str, int] = {}
    old = warnings.showwarning

    def hook(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message).lower():
            key = _site(traceback.extract_stack()[:-1])
            sites[key] = sites.get(key, 0) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = hook
        set_mode("warn")
        try:
            nb = loop.run_epoch()
        finally:
            set_mode("default")
            warnings.showwarning = old
    sync(loop.device)
    out["warn_epoch_batches"] = nb
    out["sync_sites"] = sites  # call site -> count over one epoch
    out["syncs_per_epoch"] = sum(sites.values())
    return out


class FoldClock:
    """fit's progress hook: per-epoch wall times, and a deadline that stops the fold."""

    class Deadline(Exception):
        pass

    def __init__(self, device, deadline: float | None, min_epochs: int = 3):
        self.device, self.deadline, self.min_epochs = device, deadline, min_epochs
        self.start = time.perf_counter()
        self.last = self.start
        self.epochs: list[tuple[str, float]] = []

    def __call__(self, ev) -> None:
        if ev.done == 0:  # stage start, not an epoch
            return
        now = time.perf_counter()  # fit syncs once per epoch (loss check, evaluation): no extra sync
        self.epochs.append((ev.stage.replace("stage ", ""), now - self.last))
        self.last = now
        if self.deadline is not None and now > self.deadline and len(self.epochs) >= self.min_epochs:
            raise FoldClock.Deadline()


def run_fold(method: str, fs, cfg_kw: dict, options: dict | None, deadline: float | None, device,
             step_ms: dict[str, float] | None = None) -> dict:
    """fit() for a whole fold; past ``deadline`` it stops, and the rest is extrapolated from each
    stage's median epoch (a stage not reached: the last reached stage's median epoch scaled by
    the two stages' step times ``step_ms``, when known)."""
    from imer.fusion.trainer import TrainConfig, fit, stage_epochs

    cfg = TrainConfig(**cfg_kw)
    model, train_fs, sel_fs, sel_name = prepare(fs, method, cfg, options)
    budget = stage_epochs(model, cfg)
    clock = FoldClock(device, deadline)
    complete, res = True, None
    t = time.perf_counter()
    try:
        res = fit(model, train_fs, sel_fs, cfg, sel_name, progress=clock)
    except FoldClock.Deadline:
        complete = False
    sync(device)
    wall = time.perf_counter() - t
    per_stage: dict[str, dict] = {}
    for stage, n in zip(model.stages, budget):
        times = [s for st, s in clock.epochs if st == stage]
        steady = times[1:] if len(times) > 1 else times
        per_stage[stage] = {
            "epochs": int(n), "ran": len(times),
            "first_epoch_s": round(times[0], 4) if times else None,
            "epoch_s_median": round(statistics.median(steady), 4) if steady else None,
        }
    first = clock.epochs[0][1] if clock.epochs else None
    all_steady = [s for _, s in clock.epochs[1:]]
    projected = None
    if not complete:  # done epochs as measured, the rest at each stage's median epoch
        ref_stage = next((st for st in reversed(model.stages) if per_stage[st]["epoch_s_median"]), None)
        projected = wall
        for st, p in per_stage.items():
            per_epoch = p["epoch_s_median"]
            if per_epoch is None and ref_stage is not None:
                per_epoch = per_stage[ref_stage]["epoch_s_median"]
                if step_ms and step_ms.get(st) and step_ms.get(ref_stage):
                    per_epoch *= step_ms[st] / step_ms[ref_stage]
                p["epoch_s_estimated"] = round(per_epoch, 4)
            projected += (p["epochs"] - p["ran"]) * (per_epoch or 0.0)
    return {
        "epochs": cfg.epochs, "epochs_run": len(clock.epochs), "complete": complete,
        "seconds": round(wall, 3),
        "projected_seconds": round(projected, 2) if projected is not None else round(wall, 3),
        "first_epoch_s": round(first, 4) if first is not None else None,
        "epoch_s_median": round(statistics.median(all_steady), 4) if all_steady else (round(first, 4) if first else None),
        "per_stage": per_stage,
        "steps": res.steps if res is not None else None,
        "fit_seconds": round(res.seconds, 3) if res is not None else None,
        "best": {k: {"epoch": v["epoch"], sel_name: {m: round(x, 4) for m, x in v["metrics"].items() if isinstance(x, float)}}
                 for k, v in res.best.items()} if res is not None else None,
    }


def bench_one(method: str, compile_: bool, fs, args, device, deadline: float | None) -> dict:
    import torch

    from imer.fusion.trainer import TrainConfig

    cfg_kw = dict(device=str(device), epochs=args.fold_epochs, patience=None, compile=compile_, seed=args.seed)
    entry: dict[str, Any] = {"method": method, "compile": compile_, "stages": {}, "error": None}
    t_all = time.perf_counter()
    try:
        cfg = TrainConfig(**cfg_kw)
        model, train_fs, _, _ = prepare(fs, method, cfg, None)
        entry["params"] = int(sum(p.numel() for p in model.parameters()))
        model.to(device)
        step_model = torch.compile(model, dynamic=True) if compile_ else model
        last = None
        for stage in model.stages:
            loop = StepLoop(model, train_fs, cfg, device, stage, step_model, first_epoch=0 if last is None else last.global_epoch)
            entry["stages"][stage] = time_steps(loop, args.warmup, args.steps)
            last = loop
        if args.sync_debug == "always" or (args.sync_debug == "auto" and device.type == "cuda"):
            entry["sync_debug"] = sync_debug_epoch(last)  # the last stage: the full model (comp: fusion)
            entry["sync_debug"]["stage"] = last.stage
        del step_model, model, loop, last
    except Exception as e:  # noqa: BLE001 - record, go on with the fold and the other methods
        entry["error"] = f"step timing: {type(e).__name__}: {e}"
        traceback.print_exc()
    try:
        step_ms = {st: v.get("step_ms_median") for st, v in entry["stages"].items()}
        entry["fold"] = run_fold(method, fs, cfg_kw, None, deadline, device, step_ms)
    except Exception as e:  # noqa: BLE001
        entry["error"] = ((entry["error"] + "; ") if entry["error"] else "") + f"fold: {type(e).__name__}: {e}"
        traceback.print_exc()
    entry["seconds_total"] = round(time.perf_counter() - t_all, 2)
    return entry


def fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: list[dict]) -> None:
    head = (f"{'method':<8} {'compile':>7} {'stage':<9} {'bat/ep':>6} {'warm-up s':>9} {'step ms':>9} {'p90 ms':>8} "
            f"{'1st ep s':>8} {'epoch s':>8} {'fold s':>8} {'fold':>9} {'sync-free':>9}")
    print("\n" + head)
    print("-" * len(head))
    for r in results:
        fold = r.get("fold") or {}
        sd = r.get("sync_debug")
        free = "-" if sd is None else ("n/a" if not sd.get("checked") else ("yes" if not sd["raised"] else "NO"))
        for i, (stage, s) in enumerate(r["stages"].items() or [("-", {})]):
            ps = (fold.get("per_stage") or {}).get(stage, {})
            print(
                f"{r['method'] if i == 0 else '':<8} {str(r['compile']) if i == 0 else '':>7} {stage:<9} "
                f"{s.get('batches_per_epoch', '-'):>6} {fmt(s.get('warmup_s')):>9} {fmt(s.get('step_ms_median'), '.3f'):>9} "
                f"{fmt(s.get('step_ms_p90'), '.3f'):>8} {fmt(ps.get('first_epoch_s'), '.3f'):>8} {fmt(ps.get('epoch_s_median'), '.4f'):>8} "
                + (f"{fmt(fold.get('projected_seconds'), '.1f'):>8} {('full' if fold.get('complete') else 'projected') if fold else '-':>9} {free:>9}" if i == 0 else "")
            )
        if r.get("error"):
            print(f"  ERROR: {r['error'][:300]}")
        if sd and sd.get("checked") and (sd.get("raised") or sd.get("sync_sites")):
            print(f"  sync debug ({sd.get('stage')}): raised={sd['raised']} at {sd.get('site')}; {sd.get('error')}")
            for site, n in sd.get("sync_sites", {}).items():
                print(f"    {n:>4} x {site}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=None, help=f"feature store (default: {DEFAULT_STORE})")
    ap.add_argument("--synthetic", action="store_true", help="a synthetic store of IEMOCAP's shape instead of --store")
    ap.add_argument("--dialogues", type=int, default=151, help="--synthetic: dialogues (IEMOCAP-4: 151)")
    ap.add_argument("--mean-len", type=int, default=37, help="--synthetic: mean utterances per dialogue (IEMOCAP-4: ~37)")
    ap.add_argument("--dims", default="88,384,900", help="--synthetic: audio,text,video dims")
    ap.add_argument("--save-synthetic", type=Path, default=None, help="write the synthetic store here and exit")
    ap.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    ap.add_argument("--compile", default="both", choices=["both", "off", "on"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per stage")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per stage before (compilation happens here)")
    ap.add_argument("--fold-epochs", type=int, default=300, help="epochs of the fold (official: 300, patience 0)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall budget: folds past their share stop and are extrapolated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--sync-debug", default="auto", choices=["auto", "always", "off"],
                    help="one epoch under torch.cuda.set_sync_debug_mode: auto = on CUDA; always = also elsewhere "
                         "(a no-op there: exercises the code path only)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend for compile=True (default inductor, what TrainConfig(compile=True) uses; "
                         "the CPU dry run uses 'eager': dynamo capture only, no code generation)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.compile_backend != "inductor":
        # fit() calls torch.compile(method, dynamic=True): give it this backend (benchmark-only patch)
        _compile = torch.compile
        torch.compile = lambda *a, **k: _compile(*a, **{**k, "backend": args.compile_backend})
    from imer.devices import resolve_device
    from imer.fusion.base import METHODS
    from imer.store import is_store, load_store, save_store

    t0 = time.perf_counter()
    if args.synthetic or args.save_synthetic:
        dims = tuple(int(x) for x in args.dims.split(","))
        fs = synthetic_store(args.dialogues, args.mean_len, dims, seed=args.seed)
        source = f"synthetic: {args.dialogues} dialogues, mean length {args.mean_len}, dims {dims}"
        if args.save_synthetic:
            save_store(fs, args.save_synthetic)
            print(f"wrote a synthetic store ({len(fs)} utterances, {args.dialogues} dialogues, dims {fs.dims}) to {args.save_synthetic}")
            return 0
    else:
        store = args.store or DEFAULT_STORE
        if not is_store(store):
            sys.exit(f"{store}: no feature store (build it with benchmarks/build_iemocap_standin.py, or use --synthetic)")
        fs = load_store(store)
        source = str(store)
    device = resolve_device(args.device)
    # default: every registered method, the concat baseline first (cheapest: its figures come in
    # even when a later method's compilation overruns the budget)
    methods = args.methods.split(",") if args.methods else sorted(METHODS.names(), key=lambda m: m != "concat")
    compiles = {"both": [False, True], "off": [False], "on": [True]}[args.compile]
    env = env_info(device)
    print(f"train_step: {source}: {len(fs)} utterances, {len(set(fs.dialogues))} dialogues, dims {fs.dims}")
    print(f"device: {env['device_name']} [{device}], torch {env['torch']}; methods {methods}; compile {compiles}; "
          f"{args.warmup} warm-up + {args.steps} timed steps per stage; fold {args.fold_epochs} epochs, no early stopping")
    runs = [(m, c) for c in compiles for m in methods]
    results: list[dict] = []
    out = {
        "step": "train_step", "env": env, "data": {"source": source, "utterances": len(fs), "dims": fs.dims,
                                                    "dialogues": len(set(fs.dialogues))},
        "config": {"steps": args.steps, "warmup": args.warmup, "fold_epochs": args.fold_epochs, "patience": None,
                   "budget_s": args.budget_s, "seed": args.seed, "compile_backend": args.compile_backend,
                   "runs": [{"method": m, "compile": c} for m, c in runs]},
        "results": results, "finished": False,
    }

    def save() -> None:  # after every run: a run killed by a time limit keeps what it finished
        out["seconds_total"] = round(time.perf_counter() - t0, 2)
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json_out.with_suffix(".tmp")
            tmp.write_text(json.dumps(out, indent=2, default=str))
            tmp.replace(args.json_out)

    save()
    for i, (m, c) in enumerate(runs):
        deadline = None
        if args.budget_s:
            left = args.budget_s - (time.perf_counter() - t0)
            if left < 10:
                results.append({"method": m, "compile": c, "stages": {}, "error": None,
                                "skipped": f"budget: {left:.0f} s left of --budget-s {args.budget_s:g}"})
                print(f"\n[{m}, compile={c}] skipped: {results[-1]['skipped']}", flush=True)
                save()
                continue
            # this run's share of what is left; the step timing comes out of it too
            deadline = time.perf_counter() + max(left / (len(runs) - i) - 5.0, 1.0)
        print(f"\n[{m}, compile={c}] ...", flush=True)
        r = bench_one(m, c, fs, args, device, deadline)
        results.append(r)
        save()
        fold = r.get("fold") or {}
        print(f"  done in {r['seconds_total']:.1f} s; fold {fold.get('epochs_run')} of {fold.get('epochs')} epochs in "
              f"{fold.get('seconds')} s{'' if fold.get('complete', True) else ' (stopped by the budget; extrapolated: ' + str(fold.get('projected_seconds')) + ' s)'}",
              flush=True)
    print_table(results)
    out["finished"] = True
    save()
    if args.json_out:
        print(f"\nwrote {args.json_out}")
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
