"""Benchmark: many utterances over few media files (long recordings cut into segments).

Real corpora look like this: IEMOCAP sessions, meetings and call recordings are long files with
a manifest of (file, start, end) rows. Two generated scenarios (STAND-IN media: a modulated tone
with noise and 160x120 frames with no face; the timings depend on the amount of media, not its
content), each run with the offline defaults (eGeMAPS, MiniLM, faceprint) from an empty cache:

* ``rows``: 10,000 manifest rows over 3 files of 60 s, 9 distinct segments (each segment is
  listed about 1,100 times, as a manifest with repeated rows or several labellers would);
* ``hour``: one 1-hour recording (audio + 10 fps video) cut into 1,000 consecutive segments of
  3.6 s with transcripts;
* ``hour-decode``: decoding only, the 1-hour file's 1,000 segments through one shared reader
  (what ``imer extract`` does) against opening the file again for every segment (what it did
  before), audio and video.

Each scenario prints wall seconds, peak resident memory of the process (``ru_maxrss``) and the
extraction summary; run each in its own process for a clean peak (the default runs them in
turn, each in a subprocess). Media is generated once under ``bench-out/many-segments/``.

    python benchmarks/many_segments.py                   # all scenarios, one subprocess each
    python benchmarks/many_segments.py --scenario rows   # one scenario in this process
    python benchmarks/many_segments.py --json-out bench-out/many-segments/run.json
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from extract_throughput import ROOT, device_info, loadavg  # noqa: E402  (puts the repo on sys.path, HF offline)

OUT = ROOT / "bench-out" / "many-segments"
SCENARIOS = ("rows", "hour", "hour-decode")
DATA_LINE = "DATA: STAND-IN generated media (tone + noise, 160x120 frames without faces)"


# ----------------------------------------------------------------------------- media
def write_recording(path: Path, seconds: float, fps: int = 10, seed: int = 0) -> Path:
    """An mp4 with 160x120 H.264 video at ``fps`` and 16 kHz mono AAC: a 220 Hz tone whose
    loudness follows a random syllable-rate envelope, over low noise. Written once."""
    import av
    import numpy as np

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rate, hop = 16000, 1024
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), mode="w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 160, 120, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "30"}
        vs.codec_context.gop_size = 2 * fps
        aus = out.add_stream("aac", rate=rate)
        aus.layout = "mono"
        n_frames = int(seconds * fps)
        img = np.zeros((120, 160, 3), np.uint8)
        for i in range(n_frames):
            img[:, :, 0] = (i * 3) % 256
            img[:60, :80, 1] = (i // 7) % 256
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        total = int(seconds * rate)
        t0 = 0
        while t0 < total:
            n = min(rate * 10, total - t0)
            t = (t0 + np.arange(n)) / rate
            env = np.interp(t, np.arange(0, seconds + 1, 0.25), rng.uniform(0.0, 1.0, int(seconds * 4) + 5)[: len(np.arange(0, seconds + 1, 0.25))])
            x = (0.3 * env * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)
            for s in range(0, n, hop):
                chunk = x[s : s + hop]
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                af.sample_rate = rate
                af.pts = t0 + s
                af.time_base = Fraction(1, rate)
                for p in aus.encode(af):
                    out.mux(p)
            t0 += n
        for p in aus.encode():
            out.mux(p)
    tmp.rename(path)
    return path


def rows_manifest(folder: Path) -> Path:
    """10,000 rows over 3 files of 60 s and 9 distinct segments (3 per file)."""
    files = [write_recording(folder / f"session{k}.mp4", 60.0, seed=k) for k in range(3)]
    segs = [(5.0, 9.0), (20.0, 26.5), (40.0, 43.0)]
    words = ["we should talk about it", "that is wonderful news", "leave me alone"]
    man = folder / "rows.csv"
    with open(man, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "start", "end", "transcript", "label", "speaker", "dialogue"])
        for i in range(10_000):
            k, j = i % 3, (i // 3) % 3
            s, e = segs[j]
            w.writerow([f"row{i:05d}", files[k].name, s, e, words[j], ["neutral", "happy", "angry"][j], f"spk{k}", f"session{k}"])
    return man


def hour_manifest(folder: Path) -> Path:
    """One 1-hour recording, 1,000 consecutive 3.6 s segments with transcripts."""
    rec = write_recording(folder / "meeting-1h.mp4", 3600.0, seed=7)
    man = folder / "hour.csv"
    with open(man, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "start", "end", "transcript", "label", "dialogue"])
        for i in range(1000):
            w.writerow([rec.name, round(i * 3.6, 3), round((i + 1) * 3.6, 3), f"turn number {i} of the meeting",
                        ["neutral", "happy", "angry"][i % 3], "meeting"])
    return man


# ----------------------------------------------------------------------------- scenarios
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_extract(manifest: Path) -> dict:
    from imer.extractors.run import ExtractConfig
    from imer.pipeline.ingest import read_manifest
    from imer.workflows import extract_store

    t0 = time.perf_counter()
    utts = read_manifest(manifest)
    with tempfile.TemporaryDirectory() as tmp:
        _, summary = extract_store(utts, Path(tmp) / "feats", ExtractConfig())
        t_cold = time.perf_counter() - t0
        t1 = time.perf_counter()
        _, warm = extract_store(utts, Path(tmp) / "feats2", ExtractConfig(cache_dir=Path(tmp) / "feats" / ".cache"))
        t_warm = time.perf_counter() - t1
    s = summary.to_dict()
    return {"utterances": s["utterances"], "files": s["files"], "seconds_cold": round(t_cold, 2),
            "seconds_warm_cache": round(t_warm, 2), "extracted": s["extracted"], "reused": s["reused"],
            "present": s["present"], "missing": s["missing"], "stage_seconds": s["stage_seconds"],
            "warm_cache_hits": warm.to_dict()["cache_hits"]}


def run_hour_decode(manifest: Path) -> dict:
    """Decode-only: the shared reader against one open per segment, audio and video."""
    from imer.pipeline.decode import DecodeConfig
    from imer.pipeline.ingest import load_inputs, read_manifest
    from imer.pipeline.media import MediaReader
    from imer.types import Modality

    utts = read_manifest(manifest)
    cfg = DecodeConfig()
    out = {}
    for name, want in (("audio", {Modality.AUDIO}), ("audio+video", {Modality.AUDIO, Modality.VIDEO})):
        t0 = time.perf_counter()
        with MediaReader(utts[0].source) as reader:
            shared = sum(1 for u in utts if load_inputs(u, want, cfg, reader=reader).status[Modality.AUDIO].present)
        t_shared = time.perf_counter() - t0
        n_alone = 100  # a sample: each call opens and probes the file again
        t0 = time.perf_counter()
        alone = sum(1 for u in utts[:: len(utts) // n_alone] if load_inputs(u, want, cfg).status[Modality.AUDIO].present)
        t_alone = (time.perf_counter() - t0) * len(utts) / n_alone
        out[name] = {"shared_reader_s": round(t_shared, 2), "open_per_segment_s_extrapolated": round(t_alone, 2),
                     "speedup": round(t_alone / t_shared, 1), "present_shared": shared, "present_alone_sample": alone}
    return out


def scenario(name: str) -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = rows_manifest(OUT) if name == "rows" else hour_manifest(OUT)
    t_media = time.perf_counter() - t0
    result = run_hour_decode(manifest) if name == "hour-decode" else run_extract(manifest)
    return {"scenario": name, "media_generation_s": round(t_media, 1), **result, "peak_rss_mb": round(peak_rss_mb(), 1),
            "loadavg": loadavg()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=SCENARIOS, default=None, help="run one scenario in this process")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (extractors)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.scenario:
        print(json.dumps(scenario(args.scenario)))
        return 0
    print(f"many_segments: {device_info('cpu')['device_name']}; {DATA_LINE}")
    results = []
    for name in SCENARIOS:
        proc = subprocess.run([sys.executable, __file__, "--scenario", name, "--threads", str(args.threads)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr)
            return proc.returncode
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"\n[{name}] peak RSS {r['peak_rss_mb']} MB (media generation {r['media_generation_s']} s, not counted)")
        for k, v in r.items():
            if k not in ("scenario", "peak_rss_mb", "media_generation_s"):
                print(f"  {k}: {v}")
    print(f"\n{DATA_LINE}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
