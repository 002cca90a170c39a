#!/usr/bin/env bash
# kdrun's GPU check, one call on a GPU machine without network (about 8 minutes on one H100):
# the CUDA-only tests, scripts/bench.py at batch 128 and 512 (eager, compiled, CUDA graph) and
# on the machine's CPU, a real KD run timed to extrapolate 200 epochs (recompiles counted),
# Noisy Student, DML and AFD graph vs eager, the feature baselines FitNet, AT, CRD and ReviewKD
# (eager, compiled, graph; parts bench_<method>), every method's quickstart on CUDA, DeepInversion's
# synthesis (graph vs eager), captured vs eager test accuracy at 20 epochs (two seeds), and
# joblib sweeps of 2 and 4 jobs on the one GPU, and packed sweeps (hydra/launcher=packed: a
# pack of 8 students on one teacher, bench_pack8 against the lone job eager and captured with
# memory per member, and sweep_packed, a real sweep of 8 jobs in one pack). Not all of it fits
# one call: the parts named
# below took, on an H200 on 2026-11-26, tests 35 s, teacher 89 s, kd_200 270 s, accuracy
# 145 s, bench_cpu 28 s, sweep_n2 41 s, sweep_n4 49 s, synthesis 30 s, bench_afd_disc_every2
# 19 s. Two calls on one warm machine measure what the default call leaves out; the machine
# goes back 30 s after a call, so the second must follow at once (a cache in /tmp outlives a
# call; one in the carried .gpu/ does not):
#   KDRUN_CACHE=/tmp/kdrun-cache GPU_CHECK_BUDGET=570 \
#     GPU_CHECK_ONLY='tests|teacher|kd_200|accuracy' bash .gpu/kit.sh bash scripts/gpu_check.sh
#   KDRUN_CACHE=/tmp/kdrun-cache GPU_CHECK_BUDGET=240 \
#     GPU_CHECK_ONLY='bench_cpu|bench_afd_disc_every2|synthesis|sweep_n[24]' \
#     bash .gpu/kit.sh bash scripts/gpu_check.sh
# The teacher part caches the teacher the later runs use; the 200-epoch run (only when
# GPU_CHECK_ONLY names it) is also the sweep's one-job figure.
# Each part has its own time limit and failures do not stop the others; everything lands in
# $OUT (default ./gpu-check): summary.json, bench/<part>/bench.json and logs.tar.gz.
#
#   bash ../shared/gpu/prepare.sh        # here: fills .gpu/ (wheels, CIFAR-10, launcher)
#   pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/wheels \
#     pytest pluggy iniconfig pygments packaging hydra-joblib-launcher joblib  # tests, sweeps
#   device run, carry [".gpu"]:  bash .gpu/kit.sh bash scripts/gpu_check.sh
#
# GPU_CHECK_ONLY=REGEX runs only the parts whose names match (e.g. 'tests|kd_run|quick_.*');
# GPU_CHECK_BUDGET=SECONDS (default 480) bounds the whole check.
# GPU_CHECK_TINY=1 runs every part on tiny settings (any machine, CPU too): a check of this
# script, not a measurement.
set -u
OUT=${OUT:-$PWD/gpu-check}
DATA=${DATA:?set DATA to a CIFAR-10 root (ImageFolder JPEG tree), as .gpu/kit.sh does}
PY=${PYTHON:-python3}
LOGS=$OUT/logs
mkdir -p "$LOGS"
: > "$OUT/sections.jsonl"
export TORCH_LOGS=${TORCH_LOGS:-recompiles}  # every recompile is logged, so it can be counted

CIFAR=(dataset=cifar10 "dataset.root=$DATA" logger=none)
KD=(method=kd teacher=wrn_40_2 student=wrn_16_2)
STEPS=(bench.steps=200 bench.warmup=20 bench.workers=12)
EPOCHS=5          # of the timed KD run (200 are extrapolated from these)
FULL_EPOCHS=200   # of the last part's KD run
QUICK=(experiment=quickstart logger=none eval=clean trainer.compile=false epochs=3
       teacher.epochs=5)
SWEEP_EPOCHS=5    # of each sweep job (epochs 2..5 are timed together)
PACK=8            # students in the packed bench and sweep
PACK_ALPHAS=0.1,0.3,0.5,0.7   # the packed sweep: these x T=2,4
SYNTH_BATCH=256
CPU_STEPS=20      # of the CPU bench
SYNTH_ITERATIONS=200
ACCURACY_EPOCHS=20
GRAPH=true        # trainer.cuda_graph of the accuracy runs' captured half
FEATURE_PAIR=(teacher=wrn_40_2 student=wrn_16_2)
CRD_NEGATIVES=16384
if [ "${GPU_CHECK_TINY:-}" ]; then
  CIFAR+=(dataset.train_subset=256 dataset.test_subset=128 trainer.device=cpu)
  KD=(method=kd teacher=resnet8 student=resnet8)
  FEATURE_PAIR=(teacher=resnet8 student=resnet8)
  CRD_NEGATIVES=64
  STEPS=(bench.steps=2 bench.warmup=1 bench.workers=0 bench.compile=false bench.graph=false)
  EPOCHS=2
  FULL_EPOCHS=2
  QUICK+=(epochs=1 teacher.epochs=1 trainer.device=cpu synthesis.pool_size=16
          synthesis.iterations=2 dataset.test_subset=64 trainer.max_steps=2)
  SWEEP_EPOCHS=2
  PACK=2
  PACK_ALPHAS=0.5
  SYNTH_BATCH=8
  CPU_STEPS=2
  SYNTH_ITERATIONS=2
  ACCURACY_EPOCHS=1
  GRAPH=false     # no CUDA here: both halves eager, to check the script
fi

# part NAME SECONDS COMMAND...: runs it under a time limit, its output in logs/NAME.log; a part
# is cut to what is left of GPU_CHECK_BUDGET seconds, and skipped when under 15 s are left, so
# the summary is always written
BUDGET=${GPU_CHECK_BUDGET:-480}
BEGIN=$(date +%s)
part() {
  local name=$1 limit=$2 start rc took left
  shift 2
  [[ "$name" =~ ^(${GPU_CHECK_ONLY:-.*})$ ]] || return 0
  left=$(( BUDGET - ($(date +%s) - BEGIN) ))
  if [ "$left" -lt 15 ]; then
    echo "== $name skipped: the budget is spent"
    echo "{\"part\": \"$name\", \"rc\": null, \"seconds\": 0}" >> "$OUT/sections.jsonl"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  start=$(date +%s%N)
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  took=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "   rc=$rc in ${took} ms"
  echo "{\"part\": \"$name\", \"rc\": $rc, \"seconds\": $took.0e-3}" >> "$OUT/sections.jsonl"
  tail -n 8 "$LOGS/$name.log" | cut -c1-200 | sed 's/^/   | /'
}

$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) \
  if torch.cuda.is_available() else 'cpu')" | tee "$OUT/device.txt"

part tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_step.py \
  tests/test_deepinversion.py::test_a_captured_synthesis_gives_the_eager_images
part bench128 240 $PY scripts/bench.py "${KD[@]}" "${CIFAR[@]}" "${STEPS[@]}" \
  hydra.run.dir="$OUT/bench/bench128"

# a real run: the teacher cached first, then EPOCHS timed epochs with the standard evaluation
part teacher 120 $PY -m kdrun "${KD[@]}" "${CIFAR[@]}" teacher.epochs=1 epochs=1 eval=clean \
  hydra.run.dir="$OUT/runs/teacher"
part kd_run 240 $PY -m kdrun "${KD[@]}" "${CIFAR[@]}" teacher.epochs=1 epochs=$EPOCHS \
  hydra.run.dir="$OUT/runs/kd"

# the real thing, a 200-epoch KD run with the teacher cached, only when GPU_CHECK_ONLY names
# it (over 4 minutes); its speed is also that of one sweep job alone
if [ "${GPU_CHECK_ONLY:-}" ]; then
  part kd_200 420 $PY -m kdrun "${KD[@]}" "${CIFAR[@]}" teacher.epochs=1 epochs=$FULL_EPOCHS \
    hydra.run.dir="$OUT/runs/kd_200"
fi

part bench512 120 $PY scripts/bench.py "${KD[@]}" "${CIFAR[@]}" "${STEPS[@]}" \
  trainer.batch_size=512 bench.compile=false hydra.run.dir="$OUT/bench/bench512"

# a pack of PACK KD students sharing the batches and one teacher forward, against the lone job
# (eager, compiled and captured as a run has them), with the peak memory of each; then a real
# packed sweep of PACK jobs (the teacher cached above)
part bench_pack8 300 $PY scripts/bench.py "${KD[@]}" "${CIFAR[@]}" "${STEPS[@]}" \
  bench.pack=$PACK bench.reference=false hydra.run.dir="$OUT/bench/bench_pack8"
part sweep_packed 240 $PY -m kdrun -m hydra/launcher=packed hydra.launcher.pack=$PACK \
  "${KD[@]}" "${CIFAR[@]}" teacher.epochs=1 epochs=$SWEEP_EPOCHS eval=clean \
  "alpha=$PACK_ALPHAS" T=2,4 hydra.sweep.dir="$OUT/runs/sweep_packed"

# the same bench on the machine's CPU (bf16 where it has AVX-512 BF16 or AMX): the CPU must keep
# its lead over the reference (summary.json says which bf16 instructions the CPU has)
part bench_cpu 150 $PY scripts/bench.py "${KD[@]}" "${CIFAR[@]}" trainer.device=cpu \
  bench.steps=$CPU_STEPS bench.warmup=3 bench.workers=4 bench.compile=false bench.graph=false \
  hydra.run.dir="$OUT/bench/bench_cpu"

# multi-network methods and Noisy Student: graph against eager (compile off, to time the step)
part bench_noisy_student 120 $PY scripts/bench.py method=noisy_student student=wrn_28_2 \
  "${CIFAR[@]}" "${STEPS[@]}" bench.compile=false bench.reference=false \
  hydra.run.dir="$OUT/bench/bench_noisy_student"
for m in dml afd; do
  part bench_$m 120 $PY scripts/bench.py method=$m student=wrn_16_2 "method.peers=[wrn_16_2]" \
    "${CIFAR[@]}" "${STEPS[@]}" bench.compile=false bench.reference=false \
    hydra.run.dir="$OUT/bench/bench_$m"
done
# AFD updating its discriminators every other step: two forms of the step, a graph each
part bench_afd_disc_every2 120 $PY scripts/bench.py method=afd student=wrn_16_2 \
  "method.peers=[wrn_16_2]" method.disc_every=2 "${CIFAR[@]}" "${STEPS[@]}" bench.compile=false \
  bench.reference=false hydra.run.dir="$OUT/bench/bench_afd_disc_every2"

# the field's feature baselines on the KD pair (eager, compiled - their feature paths too -
# and captured), beside kd's own rows in bench128
for m in fitnet at crd reviewkd; do
  extra=(); [ $m = crd ] && extra=(method.negatives=$CRD_NEGATIVES)
  part bench_$m 150 $PY scripts/bench.py method=$m "${FEATURE_PAIR[@]}" "${extra[@]}" \
    "${CIFAR[@]}" "${STEPS[@]}" bench.reference=false hydra.run.dir="$OUT/bench/bench_$m"
done

for yaml in conf/method/*.yaml; do
  m=$(basename "$yaml" .yaml)
  part quick_$m 60 $PY -m kdrun "${QUICK[@]}" method=$m hydra.run.dir="$OUT/runs/quick_$m"
done

# DeepInversion's synthesis at the paper's CIFAR-10 setting (ResNet-34 teacher, batch 256),
# SYNTH_ITERATIONS Adam iterations timed eager and captured side by side
# (random-initialised teacher): summary.json extrapolates the paper's 50,000-image pool. Compile
# off: compiling ResNet-34's forward and backward would cost more of the check than it tells
part synthesis 180 $PY scripts/bench.py method=deepinversion teacher=resnet34 "${CIFAR[@]}" \
  "${STEPS[@]}" synthesis.batch_size=$SYNTH_BATCH bench.synthesis=$SYNTH_ITERATIONS \
  bench.compile=false hydra.run.dir="$OUT/bench/bench_synthesis"

# captured against eager training: test accuracy after ACCURACY_EPOCHS epochs, two seeds each
# (compile off in both, so only the capture differs), the four runs at once on the one GPU:
# accuracy does not depend on the pace (cuDNN's timed choice of algorithms aside)
part accuracy 360 $PY -m kdrun -m hydra/launcher=joblib hydra.launcher.n_jobs=4 "${KD[@]}" \
  "${CIFAR[@]}" teacher.epochs=1 epochs=$ACCURACY_EPOCHS eval=clean trainer.compile=false \
  "trainer.cuda_graph=$GRAPH,false" seed=0,1 hydra.sweep.dir="$OUT/runs/accuracy"

# N jobs of one sweep on the one GPU at once (the teacher is cached above; one job alone is
# the 200-epoch run)
for n in 2 4; do
  seeds=$(seq -s, 0 $((n - 1)))
  part sweep_n$n 150 $PY -m kdrun -m hydra/launcher=joblib hydra.launcher.n_jobs=$n \
    "${KD[@]}" "${CIFAR[@]}" teacher.epochs=1 epochs=$SWEEP_EPOCHS eval=clean \
    "seed=$seeds" hydra.sweep.dir="$OUT/runs/sweep_n$n"
done

$PY - "$OUT" "$EPOCHS" "$FULL_EPOCHS" <<'EOF'
"""summary.json: every part's status and time, the benches, the KD run's epoch times (200
epochs extrapolated), recompiles, which steps were captured, the sweeps' total img/s."""
import json
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

out, epochs, full_epochs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
logs = out / "logs"
parts = [json.loads(line) for line in (out / "sections.jsonl").read_text().splitlines()]
cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
summary = {"device": (out / "device.txt").read_text().strip(),
           "cpu": {"model": next(iter(re.findall(r"^model name\s*: (.*)$", cpuinfo, re.M)), None),
                   "bf16": sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo)))},
           "parts": {p["part"]: {"rc": p["rc"], "seconds": round(p["seconds"], 1)}
                     for p in parts}}
for bench in sorted(out.glob("bench/*/bench.json")):
    summary[bench.parent.name] = json.loads(bench.read_text())


def text(name):
    path = logs / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


stamp = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\].*?- epoch (\d+)/(\d+)", re.M)
for part, run, run_epochs in (("kd_run", "kd", epochs), ("kd_200", "kd_200", full_epochs)):
    times = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
             for m in stamp.finditer(text(part)) if m.group(3) == str(run_epochs)]
    if len(times) >= 2:
        steps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
        epoch_s = statistics.median(steps)
        wall = summary["parts"][part]["seconds"]
        summary[part] = {"epochs": run_epochs, "wall_s": wall, "wall_min": wall / 60,
                         "median_epoch_s": epoch_s}
        if run_epochs < 200:
            summary[part].update(epoch_s=steps, extrapolated_200_epochs_min=(
                wall + (200 - run_epochs) * epoch_s) / 60)
    results = out / "runs" / run / "results.json"
    if results.exists():
        r = json.loads(results.read_text())
        summary.setdefault(part, {}).update(
            {k: r.get(k) for k in ("test/acc", "train/img_s", "train/time_s", "train/captured")})
synthesis = summary.get("bench_synthesis", {})
for key, rate in list(synthesis.items()):
    if key.endswith("_img_iter_s"):  # 2,000 iterations for each of 50,000 images
        synthesis[key.replace("_img_iter_s", "_paper_pool_hours")] = 50_000 * 2_000 / rate / 3600
summary["recompiles"] = {name.stem: len(re.findall(r"Recompiling function", name.read_text(
    errors="replace"))) for name in sorted(logs.glob("*.log"))}
summary["recompile_limit_warnings"] = sum(
    len(re.findall(r"recompile_limit|cache_size_limit", p.read_text(errors="replace")))
    for p in logs.glob("*.log"))
summary["captured"] = {}
for path in sorted(logs.glob("quick_*.log")):
    log = path.read_text(errors="replace")
    summary["captured"][path.stem.removeprefix("quick_")] = {
        "captured": log.count("captured as one CUDA graph"),
        "eager": re.findall(r"not captured as a CUDA graph: ([^;]*)", log)
        + re.findall(r"could not be captured as a CUDA graph \(([^)]*)", log)}


def together(run_dirs):
    """The jobs' images of epochs 2..K over the span from the first job's epoch 1 to the last
    job's epoch K (per-epoch evaluation included), so jobs that did not overlap count as such;
    and each job's own train/img_s."""
    rates, windows, images = [], [], 0.0
    for run_dir in run_dirs:
        r = json.loads((run_dir / "results.json").read_text())
        rates.append(r.get("train/img_s", 0))
        log = "".join(p.read_text(errors="replace") for p in run_dir.glob("*.log"))
        times = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                 for m in stamp.finditer(log)]
        if len(times) >= 2:
            windows.append((times[0], times[-1]))
            images += rates[-1] * r.get("train/time_s", 0) * (len(times) - 1) / len(times)
    found = {"jobs": len(rates), "img_s_each": rates}
    if windows:
        span = max(end for _, end in windows) - min(start for start, _ in windows)
        found["img_s_together"] = images / span.total_seconds()
    return found


for n in (2, 4):
    jobs = sorted(p.parent for p in (out / "runs" / f"sweep_n{n}").glob("*/results.json"))
    if jobs:
        summary[f"sweep_n{n}"] = together(jobs)
# a packed sweep: each member's train/img_s is its images over the pack's training time, so a
# pack's student images per second are their sum
packed = [json.loads(p.read_text())
          for p in sorted((out / "runs" / "sweep_packed").glob("*/results.json"))]
if packed:
    packs = {}
    for r in packed:
        packs.setdefault(r.get("meta/pack_id", "alone"), []).append(r)
    summary["sweep_packed"] = {
        "jobs": len(packed), "img_s_each": [r.get("train/img_s") for r in packed],
        "captured": [r.get("train/captured") for r in packed],
        "test_acc": [r.get("test/acc") for r in packed],
        "img_s_per_pack": {pack: sum(r.get("train/img_s", 0) for r in members)
                           for pack, members in packs.items()}}
# one job alone: the 200-epoch run, measured the same way
if (out / "runs" / "kd_200" / "results.json").exists():
    summary["sweep_n1"] = together([out / "runs" / "kd_200"])
accuracy = {}
for path in sorted((out / "runs" / "accuracy").glob("*/results.json")):
    r = json.loads(path.read_text())
    seed = re.search(r"^seed: (\d+)", (path.parent / "config.yaml").read_text(), re.M).group(1)
    step = "captured" if r.get("meta/cuda_graph") else "eager"
    accuracy.setdefault(step, {})[f"seed{seed}"] = {
        "test/acc": r["test/acc"], "train/captured": r.get("train/captured")}
if accuracy:
    summary["accuracy_graph_vs_eager"] = accuracy
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps({k: v for k, v in summary.items() if k != "recompiles"}, indent=1)[:6000])
EOF
tar -czf "$OUT/logs.tar.gz" --exclude='*.pt' -C "$OUT" logs runs 2>/dev/null
rm -rf "$LOGS" "$OUT/runs" "$OUT/sections.jsonl"
