#!/usr/bin/env bash
# Every GPU figure of the project in one prepared run, for whoever draws a GPU machine.
#
#   bash benchmarks/gpu.sh            # on the GPU machine: ~8 min of benchmarks (+ venv setup)
#   bash benchmarks/gpu.sh --dry-run  # here, on CPU: the same steps at toy sizes (< ~3 min)
#
# Before a GPU session, on the CPU machine: `python benchmarks/make_gpu_payload.py` (writes the
# git-ignored gpu-payload/: the IEMOCAP-4 stand-in store, packed, and 9 RAVDESS clips; < 64 MiB);
# then one `run` call: command `bash benchmarks/gpu.sh`, carry ["gpu-payload"], timeout_s 600.
#
# Steps (each with a time budget, its own log under $OUT/logs/, its own JSON under $OUT; a
# failing step is recorded and the next one still runs):
#   1. train_step  benchmarks/train_step.py: step / epoch / fold (300 epochs) time per method,
#                  compile off and on, plus one epoch under torch.cuda.set_sync_debug_mode
#   2. mr_table    benchmarks/fusion_mr_table.py on the stand-in store, --device cuda, defaults
#   3. extract     benchmarks/extract_throughput.py: decode-only ceiling, offline backends and the
#                  paper stack (random-init wav2vec2-large / deberta-large / MA-Net, real sizes)
#   4. predict     benchmarks/predict_latency.py --paper-stack: cold start, warm latency, batch
# Then benchmarks/gpu_report.py merges everything into $OUT/gpu.json and $OUT/gpu.md (also
# after every step, so a run killed from outside keeps an interim report).
#
# Time: the whole script (setup included) stops by GPU_DEADLINE_S (default 570 s: the `run`
# tool allows 600 s a command). Building the random-init paper models (at most 60 s) and the
# step budgets (train_step 170 s, mr_table 70 s, extract 70 s, predict 110 s) add up to 480 s,
# i.e. 8 min. The budgets are shares: each step gets its share of the time left, so a slow
# setup shrinks all of them and time a step leaves unused goes to the next ones.
# train_step keeps inside its budget by itself (folds that would run past their share stop and
# are extrapolated from their median epoch); the others are stopped by `timeout`.
# How the shares were estimated (CPU figures of this machine, 1 thread): concat step 37 ms,
# comp step 0.8-2 s, comp epoch 3-7 s on CPU; on an H200 these small models are bound by kernel
# launches: ~3 ms (concat) and ~15-30 ms (comp) a step, so a 300-epoch fold ~20 s (concat) and
# ~30-60 s (comp) uncompiled. Compilation (inductor, cold cache) is the unknown: ComP took ~525 s
# on 1 CPU thread here (C++ code generation); with 16 cores and Triton a guess is 30-120 s. So
# train_step runs concat first, compile off before on, and saves its JSON after every run: an
# overrun loses only the unfinished runs. The MR table trains 100 epochs (patience 30) per
# method: ~10-30 s each, eval ~5 s. Building the random paper models ~20-40 s (16 cores, 3 GB
# written). Extraction: decoding 9 clips three times ~10 s, the backends ~20 s, extract_features
# x3 ~30 s. Predict: two bundles (extraction + 20 epochs) ~30 s, 6 cold-start processes ~10-15 s
# each (cold start of the first mode only when its share is under 100 s), warm ~25 s.
#
# Environment: OUT (default ./bench-out/gpu), GPU_DEADLINE_S, PYTHON (dry run: the interpreter;
# default .venv/bin/python, else python3), GPU_WORK (models and unpacked data; default
# ./bench-out/gpu-work, outside $OUT so that 3 GB of random weights do not come back).

set -u -o pipefail

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu.sh: unknown argument $arg (use --dry-run or nothing)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
T0=$(date +%s)
OUT="${OUT:-$ROOT/bench-out/gpu}"
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
: > "$OUT/steps.jsonl"
rm -f "$OUT"/{train_step,mr_table,extract,predict}.json "$OUT"/gpu.json "$OUT"/gpu.md
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if [ "$DRY" = 1 ]; then
  DEADLINE=${GPU_DEADLINE_S:-420}
  WORK="${GPU_WORK:-$OUT/work}"
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  DEVICE=cpu
  THREADS=(--threads 1)
  declare -A NOMINAL=([train_step]=120 [mr_table]=60 [extract]=90 [predict]=120)
  MODELS_LIMIT=60
else
  DEADLINE=${GPU_DEADLINE_S:-570}
  WORK="${GPU_WORK:-$ROOT/bench-out/gpu-work}"
  DEVICE=cuda
  THREADS=()
  declare -A NOMINAL=([train_step]=170 [mr_table]=70 [extract]=70 [predict]=110)
  MODELS_LIMIT=60  # building the random-init paper models (before the steps; shared by extract and predict)
fi
mkdir -p "$WORK"
REPORT_RESERVE=15
ORDER=(train_step mr_table extract predict)
REST_NOMINAL=0
for s in "${ORDER[@]}"; do REST_NOMINAL=$((REST_NOMINAL + NOMINAL[$s])); done

say() { echo "[gpu.sh $(( $(date +%s) - T0 ))s] $*"; }

# ----------------------------------------------------------------------------- setup
SETUP="not needed (dry run)"
SETUP_S=0
if [ "$DRY" = 1 ]; then
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
  fi
else
  if [ -x "$ROOT/.venv/bin/python" ]; then
    SETUP="venv present"
  else
    say "setting up .venv (torch 2.14.1, imer[offline,dev]) ..."
    t=$(date +%s)
    if { python3 -m venv .venv && .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 \
           && .venv/bin/pip install -q -e ".[offline,dev]"; } > "$OUT/logs/setup.log" 2>&1; then
      SETUP="venv created"
    else
      SETUP="venv setup FAILED (see logs/setup.log)"
      tail -n 20 "$OUT/logs/setup.log"
    fi
    SETUP_S=$(( $(date +%s) - t ))
    say "$SETUP in ${SETUP_S} s"
  fi
  PY="${PYTHON:-$ROOT/.venv/bin/python}"
fi
# the report and the step records need only the standard library: a failed setup still gets them
RPY="$PY"
if ! "$RPY" -c "" > /dev/null 2>&1; then RPY="$(command -v python3 || echo python)"; fi

# ----------------------------------------------------------------------------- environment
"$PY" - "$OUT/env.json" <<'EOF' > "$OUT/logs/env.log" 2>&1 || say "could not read the environment (see logs/env.log)"
import json, os, platform, subprocess, sys, time
env = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "python": platform.python_version(),
       "cpu_count": os.cpu_count()}
try:
    env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
except Exception:
    pass
try:
    import torch
    env["torch"] = torch.__version__
    if torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["gpu"] = f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s)"
    else:
        cpu = platform.processor()
        try:
            cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
        except Exception:
            pass
        env["device_name"] = f"CPU: {cpu} ({os.cpu_count()} cores)"
except Exception as e:
    env["torch"] = f"unavailable: {e}"
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(json.dumps(env))
EOF
say "environment: $(cat "$OUT/env.json" 2>/dev/null)"

# ----------------------------------------------------------------------------- data
STORE=""
CLIPS=""
STORE_NOTE=""
if [ "$DRY" = 1 ]; then
  if "$PY" benchmarks/train_step.py --synthetic --dialogues 12 --mean-len 6 --save-synthetic "$WORK/tiny-store" > "$OUT/logs/data.log" 2>&1; then
    STORE="$WORK/tiny-store"
    STORE_NOTE="tiny synthetic store (12 dialogues)"
  fi
  "$PY" benchmarks/make_gpu_payload.py --dry-clips "$WORK/clips" --n 3 >> "$OUT/logs/data.log" 2>&1 && CLIPS="$WORK/clips"
else
  if [ -f gpu-payload/iemocap4-standin.tar.gz ]; then
    if [ -f "$WORK/iemocap4-standin/store.json" ] || tar -xzf gpu-payload/iemocap4-standin.tar.gz -C "$WORK" > "$OUT/logs/data.log" 2>&1; then
      STORE="$WORK/iemocap4-standin"
      STORE_NOTE="IEMOCAP-4 stand-in store (gpu-payload)"
    fi
  elif [ -f bench-out/iemocap4-standin/store.json ]; then
    STORE="$ROOT/bench-out/iemocap4-standin"
    STORE_NOTE="IEMOCAP-4 stand-in store (bench-out)"
  fi
  for c in gpu-payload/av-clips/ravdess-actor01 ../shared/data/av-clips/ravdess-actor01; do
    if [ -f "$c/manifest.csv" ]; then CLIPS="$(cd "$c" && pwd)"; break; fi
  done
fi
say "store: ${STORE:-none} ${STORE_NOTE:+($STORE_NOTE)}; clips: ${CLIPS:-none}"

# The random-init paper models (wav2vec2-large, deberta-large, MA-Net; tiny ones in the dry run),
# built once here and reused by extract and predict (if this fails, those steps try themselves).
MODELS="$WORK/paper-models"
SCALE=real
if [ "$DRY" = 1 ]; then MODELS="$WORK/paper-models-tiny"; SCALE=tiny; fi
MODELS_NOTE="not needed (no clips)"
if [ -n "$CLIPS" ]; then
  t=$(date +%s)
  if timeout -k 10 "$MODELS_LIMIT" "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from extract_throughput import build_paper_models; build_paper_models(sys.argv[1], scale=sys.argv[2])" \
       "$MODELS" "$SCALE" > "$OUT/logs/paper_models.log" 2>&1; then
    MODELS_NOTE="$SCALE-size random-init paper models ready in $(( $(date +%s) - t )) s"
  else
    MODELS_NOTE="building the $SCALE-size paper models FAILED after $(( $(date +%s) - t )) s (logs/paper_models.log)"
  fi
  say "$MODELS_NOTE"
fi

"$RPY" - "$OUT/run.json" "$DRY" "$SETUP" "$SETUP_S" "${STORE_NOTE:-${STORE:-none}}" "${CLIPS:-none}" "$DEADLINE" "$MODELS_NOTE" <<'EOF'
import json, sys
p, dry, setup, setup_s, store, clips, deadline, models = sys.argv[1:]
json.dump({"dry_run": dry == "1", "setup": setup, "setup_s": int(setup_s), "store": store, "clips": clips,
           "deadline_s": int(deadline), "paper_models": models}, open(p, "w"), indent=2)
EOF

# ----------------------------------------------------------------------------- steps
record() {  # name rc seconds budget timed_out skipped-reason
  "$RPY" - "$OUT/steps.jsonl" "$@" <<'EOF'
import json, sys
path, name, rc, secs, budget, timed_out, skipped = sys.argv[1:8]
rec = {"step": name, "rc": int(rc), "seconds": int(secs), "budget_s": int(budget), "timed_out": timed_out == "1",
       "log": f"logs/{name}.log", "json": f"{name}.json"}
if skipped:
    rec["skipped"] = skipped
with open(path, "a") as f:
    f.write(json.dumps(rec) + "\n")
EOF
  "$RPY" benchmarks/gpu_report.py --out "$OUT" > /dev/null 2>&1 || true
}

BUDGET=0
budget_for() {  # sets BUDGET: this step's share of the time left
  local name=$1
  local left=$(( T0 + DEADLINE - REPORT_RESERVE - $(date +%s) ))
  BUDGET=$(( left * NOMINAL[$name] / REST_NOMINAL ))
  REST_NOMINAL=$(( REST_NOMINAL - NOMINAL[$name] ))
}

run_step() {  # name budget cmd...
  local name=$1 budget=$2
  shift 2
  if [ "$budget" -lt 20 ]; then
    say "[$name] skipped: ${budget} s left for it"
    record "$name" 1 0 "$budget" 0 "no time left (${budget} s)"
    return
  fi
  say "[$name] budget ${budget} s: $*"
  local t rc timed_out=0
  t=$(date +%s)
  timeout -k 15 "$budget" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then timed_out=1; fi
  local secs=$(( $(date +%s) - t ))
  say "[$name] exit ${rc} after ${secs} s$([ "$timed_out" = 1 ] && echo ' (TIME LIMIT)')"
  tail -n 12 "$OUT/logs/$name.log" | sed 's/^/    /'
  record "$name" "$rc" "$secs" "$budget" "$timed_out" ""
}

skip_step() {  # name reason
  say "[$1] skipped: $2"
  record "$1" 1 0 0 0 "$2"
}

# 1. training step / epoch / fold
budget_for train_step
if [ "$DRY" = 1 ]; then
  TS_DATA=(--store "$STORE")
  TS_SIZE=(--fold-epochs 2 --steps 3 --warmup 1 --compile-backend eager --sync-debug always)
else
  if [ -n "$STORE" ]; then TS_DATA=(--store "$STORE"); else TS_DATA=(--synthetic); fi
  TS_SIZE=(--fold-epochs 300 --steps 30 --warmup 5)
fi
if [ "$DRY" = 1 ] && [ -z "$STORE" ]; then
  skip_step train_step "could not build the tiny synthetic store (logs/data.log)"
else
  TS_BUDGET=$(( BUDGET < NOMINAL[train_step] ? BUDGET : NOMINAL[train_step] ))
  run_step train_step "$BUDGET" "$PY" benchmarks/train_step.py "${TS_DATA[@]}" --device "$DEVICE" "${THREADS[@]}" \
    --compile both "${TS_SIZE[@]}" --budget-s $(( TS_BUDGET > 40 ? TS_BUDGET - 25 : TS_BUDGET * 2 / 3 )) \
    --json-out "$OUT/train_step.json"
fi

# 2. MR table on the stand-in store
budget_for mr_table
if [ -z "$STORE" ]; then
  skip_step mr_table "no IEMOCAP-4 stand-in store (run python benchmarks/make_gpu_payload.py and carry gpu-payload)"
elif [ "$DRY" = 1 ]; then
  run_step mr_table "$BUDGET" "$PY" benchmarks/fusion_mr_table.py --store "$STORE" --device "$DEVICE" "${THREADS[@]}" \
    --methods concat,comp,momke --epochs 2 --patience 0 --mask-seeds 1 --json-out "$OUT/mr_table.json"
else
  run_step mr_table "$BUDGET" "$PY" benchmarks/fusion_mr_table.py --store "$STORE" --device "$DEVICE" \
    --methods concat,comp,momke --json-out "$OUT/mr_table.json"
fi

# 3. extraction throughput (paper stack, random init) against the decode-only ceiling
budget_for extract
if [ -z "$CLIPS" ]; then
  skip_step extract "no clips (carry gpu-payload, or ../shared/data/av-clips)"
elif [ "$DRY" = 1 ]; then
  run_step extract "$BUDGET" "$PY" benchmarks/extract_throughput.py --device "$DEVICE" "${THREADS[@]}" --clips "$CLIPS" \
    --paper-scale tiny --models-dir "$MODELS" --paper-n 3 --fps 1 --max-frames 2 \
    --json-out "$OUT/extract.json"
else
  run_step extract "$BUDGET" "$PY" benchmarks/extract_throughput.py --device "$DEVICE" --clips "$CLIPS" \
    --models-dir "$MODELS" --json-out "$OUT/extract.json"
fi

# 4. predict latency (offline bundle and the paper stack)
budget_for predict
if [ -z "$CLIPS" ]; then
  skip_step predict "no clips (carry gpu-payload, or ../shared/data/av-clips)"
elif [ "$DRY" = 1 ]; then
  run_step predict "$BUDGET" "$PY" benchmarks/predict_latency.py --device "$DEVICE" "${THREADS[@]}" --clips "$CLIPS" \
    --paper-stack --paper-scale tiny --models-dir "$MODELS" --epochs 2 --cold-modes 1 \
    --json-out "$OUT/predict.json"
else
  COLD=()
  if [ "$BUDGET" -lt 100 ]; then COLD=(--cold-modes 1); fi
  run_step predict "$BUDGET" "$PY" benchmarks/predict_latency.py --device "$DEVICE" --clips "$CLIPS" \
    --paper-stack --models-dir "$MODELS" "${COLD[@]}" --json-out "$OUT/predict.json"
fi

# ----------------------------------------------------------------------------- report
if [ "$DRY" = 1 ] && [ -z "${GPU_WORK:-}" ]; then rm -rf "$WORK"; fi  # tiny models: ~200 MB of MA-Net
"$RPY" benchmarks/gpu_report.py --out "$OUT" --final --total-s $(( $(date +%s) - T0 )) --print
rc=$?
say "done: $OUT/gpu.json, $OUT/gpu.md (exit ${rc})"
exit $rc
