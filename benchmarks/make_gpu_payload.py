"""Pack what ``benchmarks/gpu.sh`` needs from ``../shared/data`` into ``gpu-payload/`` (git-ignored).

A GPU session gets a copy of the working tree without ``../shared``; ignored folders travel only
when named in the ``run`` tool's ``carry`` list, 64 MiB in all. Run this HERE, on the CPU
machine, before the GPU session:

    python benchmarks/make_gpu_payload.py              # -> gpu-payload/, prints its size and the carry list

It writes:

* ``gpu-payload/iemocap4-standin.tar.gz``: the IEMOCAP-4 stand-in feature store
  (``bench-out/iemocap4-standin``, built first with ``benchmarks/build_iemocap_standin.py`` when
  absent; ~32 MB of float32, ~25 MB gzipped); ``gpu.sh`` unpacks it;
* ``gpu-payload/av-clips/ravdess-actor01/``: as many RAVDESS clips of ``av-clips/ravdess-actor01``
  as fit under ``--max-mib`` (clips with real audio first, then silent-track ones; original
  files, so decoding costs are the real ones) with a ``manifest.csv`` of the same columns;
* ``gpu-payload/PAYLOAD.json``: what is inside, sizes and sha256.

``--dry-clips DIR`` instead makes a 2-clip folder for ``gpu.sh --dry-run``: from the payload,
else ``../shared/data/av-clips``, else ``../shared/data/examples/crema-d``, else generated
(a tone and a moving pattern, no face: timing only).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PAYLOAD = ROOT / "gpu-payload"
STORE_FILES = ("store.json", "utterances.jsonl", "features.safetensors", "standin_sources.jsonl")
MIB = 1024 * 1024


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def worktree_bytes() -> int | None:
    """Bytes of the files that travel without carry (tracked + untracked, not ignored)."""
    try:
        names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                               capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def read_rows(manifest: Path) -> tuple[list[str], list[dict]]:
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def write_rows(manifest: Path, columns: list[str], rows: list[dict]) -> None:
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def clip_order(rows: list[dict]) -> list[dict]:
    """Real-audio clips (``01-*``) first, then silent-track ones (``02-*``); within each, one
    clip per emotion before a second of any (so a small set still has several labels)."""
    def key(r: dict) -> tuple:
        name = Path(r["path"]).name
        return (0 if name.startswith("01-") else 1, name)

    out = []
    for group in (0, 1):
        members = sorted((r for r in rows if key(r)[0] == group), key=key)
        firsts, rest, seen = [], [], set()
        for r in members:
            (rest if r.get("emotion") in seen else firsts).append(r)
            seen.add(r.get("emotion"))
        out += firsts + rest
    return out


# ----------------------------------------------------------------------------- payload
def pack_store(store: Path, dest: Path) -> dict:
    files = [store / n for n in STORE_FILES if (store / n).is_file()]
    raw = sum(p.stat().st_size for p in files)
    t = time.perf_counter()
    with tarfile.open(dest, "w:gz", compresslevel=6) as tar:
        for p in files:
            tar.add(p, arcname=f"iemocap4-standin/{p.name}")
    return {"path": dest.name, "bytes": dest.stat().st_size, "raw_bytes": raw, "files": [p.name for p in files],
            "sha256": sha256(dest), "pack_seconds": round(time.perf_counter() - t, 1)}


def build_payload(args) -> int:
    store = args.store
    if not (store / "store.json").is_file():
        if args.no_build:
            sys.exit(f"{store}: no stand-in store; build it with: python benchmarks/build_iemocap_standin.py")
        print(f"{store}: no store yet; building it (benchmarks/build_iemocap_standin.py) ...", flush=True)
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "build_iemocap_standin.py"), "--out", str(store)],
                       cwd=ROOT, check=True)
    clips_src = args.shared / "av-clips" / "ravdess-actor01"
    if not (clips_src / "manifest.csv").is_file():
        sys.exit(f"{clips_src}: no manifest.csv (the shared data folder is needed to build the payload)")
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    store_raw = sum((store / n).stat().st_size for n in STORE_FILES if (store / n).is_file())
    print(f"stand-in store {store}: {store_raw / MIB:.1f} MiB raw")
    info = {"made": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "store": pack_store(store, out / "iemocap4-standin.tar.gz")}
    print(f"  packed -> {out / 'iemocap4-standin.tar.gz'}: {info['store']['bytes'] / MIB:.1f} MiB")
    budget = int(args.max_mib * MIB)
    used = info["store"]["bytes"] + 64 * 1024  # manifest + PAYLOAD.json
    columns, rows = read_rows(clips_src / "manifest.csv")
    chosen = []
    for r in clip_order(rows):
        if args.max_clips and len(chosen) >= args.max_clips:
            break
        size = (clips_src / r["path"]).stat().st_size
        if used + size > budget:
            continue
        used += size
        chosen.append(r)
    dest = out / "av-clips" / "ravdess-actor01"
    for r in chosen:
        target = dest / r["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clips_src / r["path"], target)
    write_rows(dest / "manifest.csv", columns, chosen)
    info["clips"] = {
        "folder": "av-clips/ravdess-actor01", "n": len(chosen), "of": len(rows),
        "with_audio": sum(Path(r["path"]).name.startswith("01-") for r in chosen),
        "files": {r["path"]: {"bytes": (dest / r["path"]).stat().st_size, "emotion": r.get("emotion")} for r in chosen},
        "bytes": sum((dest / r["path"]).stat().st_size for r in chosen),
    }
    (out / "PAYLOAD.json").write_text(json.dumps(info, indent=2))
    total = folder_bytes(out)
    wt = worktree_bytes()
    print(f"  {len(chosen)} of {len(rows)} clips ({info['clips']['with_audio']} with audio) -> {dest}: "
          f"{info['clips']['bytes'] / MIB:.1f} MiB")
    print(f"\npayload {out}: {total / MIB:.1f} MiB ({total} bytes; limit for carry: 64 MiB)")
    if wt is not None:
        print(f"working tree without ignored files (travels anyway): {wt / MIB:.1f} MiB")
    rel = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f'carry: ["{rel}"]')
    print(f'run command: bash benchmarks/gpu.sh   (carry ["{rel}"], timeout_s 600)')
    if total > 64 * MIB:
        print("WARNING: over 64 MiB: lower --max-mib")
        return 1
    return 0


# ----------------------------------------------------------------------------- dry-run clips
def dry_clips(dest: Path, n: int) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    for folder in (PAYLOAD / "av-clips" / "ravdess-actor01", SHARED / "av-clips" / "ravdess-actor01"):
        if (folder / "manifest.csv").is_file():
            columns, rows = read_rows(folder / "manifest.csv")
            rows = [r for r in clip_order(rows) if (folder / r["path"]).is_file()][:n]
            if len(rows) >= min(n, 2):
                out_rows = []
                for r in rows:
                    link = dest / Path(r["path"]).name
                    if link.is_symlink() or link.exists():
                        link.unlink()
                    link.symlink_to((folder / r["path"]).resolve())
                    out_rows.append({**r, "path": link.name})
                write_rows(dest / "manifest.csv", columns, out_rows)
                print(f"dry-run clips: {len(out_rows)} from {folder} -> {dest}")
                return 0
    crema = SHARED / "examples" / "crema-d"
    files = sorted(crema.glob("*.flv")) if crema.is_dir() else []
    if len(files) >= 2:
        rows = []
        for f in files[:n]:
            link = dest / f.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(f.resolve())
            emo = {"ANG": "angry", "HAP": "happy"}.get(f.stem.split("_")[2], "neutral")
            rows.append({"path": f.name, "emotion": emo, "transcript": "Don't forget a jacket.", "actor": f.stem.split("_")[0]})
        write_rows(dest / "manifest.csv", ["path", "emotion", "transcript", "actor"], rows)
        print(f"dry-run clips: {len(rows)} CREMA-D examples from {crema} -> {dest}")
        return 0
    return generate_clips(dest, n)


def generate_clips(dest: Path, n: int) -> int:
    """Tiny synthetic clips (H.264 or MPEG-4 video + AAC tone), no face in them: timing only."""
    import av
    import numpy as np

    rows = []
    for i in range(max(n, 2)):
        path = dest / f"generated-{i}.mp4"
        with av.open(str(path), "w") as c:
            try:
                v = c.add_stream("libx264", rate=10)
            except Exception:  # noqa: BLE001 - no libx264 in this PyAV build
                v = c.add_stream("mpeg4", rate=10)
            v.width, v.height, v.pix_fmt = 160, 120, "yuv420p"
            a = c.add_stream("aac", rate=16000)
            for k in range(20):
                img = np.zeros((120, 160, 3), np.uint8)
                img[:, (k * 8) % 160:(k * 8) % 160 + 20] = 200
                for pkt in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in v.encode():
                c.mux(pkt)
            t = np.arange(32000) / 16000.0
            tone = (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32)
            frame_len = 1024
            for s in range(0, len(tone) - frame_len + 1, frame_len):
                fr = av.AudioFrame.from_ndarray(tone[None, s:s + frame_len], format="fltp", layout="mono")
                fr.sample_rate = 16000
                for pkt in a.encode(fr):
                    c.mux(pkt)
            for pkt in a.encode():
                c.mux(pkt)
        rows.append({"path": path.name, "emotion": ("happy", "sad")[i % 2], "transcript": f"generated clip {i}", "actor": "g"})
    write_rows(dest / "manifest.csv", ["path", "emotion", "transcript", "actor"], rows)
    print(f"dry-run clips: {len(rows)} generated -> {dest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--store", type=Path, default=ROOT / "bench-out" / "iemocap4-standin")
    ap.add_argument("--out", type=Path, default=PAYLOAD)
    ap.add_argument("--max-mib", type=float, default=60.0, help="payload size limit (carry allows 64 MiB in all)")
    ap.add_argument("--max-clips", type=int, default=0, help="at most this many clips (0: as many as fit)")
    ap.add_argument("--no-build", action="store_true", help="fail instead of building a missing stand-in store")
    ap.add_argument("--dry-clips", type=Path, default=None, help="make a small clip folder for gpu.sh --dry-run here, and exit")
    ap.add_argument("--n", type=int, default=2, help="--dry-clips: how many")
    args = ap.parse_args(argv)
    if args.dry_clips:
        return dry_clips(args.dry_clips, args.n)
    args.store = args.store if args.store.is_absolute() else (ROOT / args.store)
    args.out = args.out if args.out.is_absolute() else (ROOT / args.out)
    return build_payload(args)


if __name__ == "__main__":
    sys.exit(main())
