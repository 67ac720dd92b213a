#!/usr/bin/env bash
# spikestream GPU check (issue 19): one command, run the first time a GPU machine is lent.
#
# On a machine with CUDA, in about 8.5 minutes of wall time (measured on an H100; the eager
# variants at ~1 ms a step need ~3 of them for 20,000 bins each), it
#   0. prints GPU, driver, CUDA, cuDNN, torch and library versions and which backends can run
#      on CUDA; installs the carried wheels (only those the machine lacks) and this package with
#      `pip install --no-deps --no-index --no-build-isolation -e .`, so pip never touches the
#      machine's CUDA torch (checked before and after); nothing comes from the network;
#   1. runs the GPU tests (pytest -m gpu: small and default model sizes, 5 processes at once):
#      parity of every model x CUDA backend with eager torch over 2,000 bins before and after
#      reset(), CUDA backends interleaved, CUDA backends inside the engine inline and (after an
#      overrun) on its guard thread, and step == forward on CUDA;
#   2. `spikestream bench`: lstm, transformer, rvq, mamba (default sizes, untrained: latency
#      does not depend on weights) x {torch, torchscript, cudagraph} on cuda, 20,000 bins each
#      back to back, host clock and CUDA events;
#   3. the same at 40 Hz: every variant steps once per 25 ms period, 2,400 bins each (60 s);
#   4. the runtime: `replay --device cuda --speed max` (20,000 bins) and `--speed 1` (20 s),
#      worker-thread and inline step, with the step backend measured fastest in 2;
#   5. end to end: LSL outlet -> serve --device cuda -> ZeroMQ subscriber, 1,200 bins (30 s);
#   6. merges whatever finished into benchmarks/results/<gpu-name>/ files (report.md,
#      results.json, latencies.npz, PNGs, this log) and copies them to $OUT.
# Each phase is its own process under `timeout` (its limit, cut to what is left of the whole
# run's budget, GPU_CHECK_SECONDS, default 470 s; the bench phase's own, GPU_CHECK_BENCH_S, 240 s; plus at most ~70 s to write results), so a
# phase that hangs costs only itself, and whatever finished is written. Measured on an idle
# H100 machine: 7.5 min of phases (tests 77 s, bench 192 s, paced 82 s, runtime 92 s, e2e 50 s). Exit 0 when every phase passed, 1 when one failed or ran out of time
# (the results are written all the same). A partial rerun on the still-warm machine, after a
# fix, runs only the phases named (install and versions always run), e.g.
#     GPU_CHECK_PHASES="tests bench" GPU_CHECK_SECONDS=240 bash benchmarks/gpu_check.sh
# (phases: tests bench paced runtime e2e).
#
# Without CUDA (e.g. on the CPU machine) it checks its own inputs (wheels, package,
# commands), says in one line that there is no CUDA, and exits 0 (1 if an input is missing).
# `--rehearse` runs every phase on the CPU instead, tiny (torch and torchscript, a few hundred
# bins, nothing installed), to try the script itself end to end (a few minutes).
#
# HOW TO RUN IT (a session that has a GPU machine; ~5 MB of wheels travel):
#   1. here, on the CPU machine, in the repository root of the checkout the session runs
#      from (the `run` tool sends that checkout), once:
#          bash benchmarks/gpu_check.sh --prepare
#      (downloads the missing packages' wheels for the GPU machine's Python 3.12 into .whl/,
#      which .gitignore ignores, and checks them; needs PyPI)
#   2. the `run` tool:
#          command:   bash benchmarks/gpu_check.sh
#          carry:     [".whl"]
#          timeout_s: 540
#      (no kind: an nvidia-h100-x1, or an nvidia-h200 if none is free; the report names the GPU)
#   3. the files come back under the reply's files_at: report.md, results.json,
#      gpu_check.log, <gpu-name>.tar.gz (everything, PNGs and latencies.npz included) and the
#      main PNGs. Commit them with
#          mkdir -p benchmarks/results && tar -xzf FILES_AT/<gpu-name>.tar.gz -C benchmarks/results
#      then give_back the machine unless a rerun follows at once.
#
# Not there and does not fit: onnxruntime-gpu (~255 MB) exceeds the 64 MiB that one call can
# carry, so the ONNX Runtime CUDA backend stays "not installed" on the GPU machine (its tests
# skip; the CPU onnxruntime already there is used for the CPU checks only).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
WHEELS=${GPU_CHECK_WHEELS:-$REPO/.whl}  # the carried wheels (override: to check another folder)
# Our runtime dependencies that the GPU machine's image lacks (KINDS.md's package list),
# with their own missing dependencies. Everything else (torch, numpy, numba, h5py, onnx,
# onnxscript, onnxruntime, safetensors, typer, rich, matplotlib, scipy, msgpack, pandas,
# pytest) is already there.
DISTS=(pynwb hdmf pylsl pyzmq jsonschema jsonschema-specifications referencing rpds-py ruamel.yaml platformdirs)
MAX_WHEEL_MIB=60
TOTAL_S=${GPU_CHECK_SECONDS:-470}
OUT_DIR=${OUT:-$REPO/out/gpu_check}
PY=python3
# What the bench phases run; --rehearse shrinks them to a CPU try-out.
DEVICE=cuda
STEP_BACKENDS=torch,torchscript,cudagraph
BINS=20000 WARMUP=500 PACED_BINS=2400 REPLAY_BINS=20000 REPLAY_S=20 E2E_BINS=1200

# --- inputs -------------------------------------------------------------------------------
wheel_for() {  # the wheel file of one distribution in .whl/ (names are normalised to '_')
    local stem=${1//[-.]/_}
    compgen -G "$WHEELS/${stem}-*.whl" | head -n 1
}

check_inputs() {  # prints what is missing, one item per line; silent when all is there
    local cmd d f
    for cmd in "$PY" timeout tar; do
        command -v "$cmd" >/dev/null || echo "command $cmd"
    done
    for f in pyproject.toml spikestream/cli.py spikestream/commands/bench.py benchmarks/gpu_check.py \
             tests/test_backends.py tests/test_engine.py tests/test_models.py; do
        [[ -f "$REPO/$f" ]] || echo "file $f"
    done
    for d in "${DISTS[@]}"; do
        [[ -n "$(wheel_for "$d")" ]] || echo "wheel $d (in .whl/)"
    done
    f=$(wheel_for pylsl)
    if [[ -n "$f" ]] && ! "$PY" -m zipfile -l "$f" | grep 'liblsl\.so' >/dev/null; then
        echo "pylsl wheel with liblsl bundled (got $(basename "$f"))"
    fi
    if [[ -d "$WHEELS" ]] && (( $(du -sm "$WHEELS" | cut -f1) > MAX_WHEEL_MIB )); then
        echo "a smaller .whl/ (over $MAX_WHEEL_MIB MiB; the run tool carries 64 MiB in all)"
    fi
}

prepare() {  # on the CPU machine, with PyPI: wheels for the GPU machine's CPython 3.12, x86-64
    local pins=() d v
    for d in "${DISTS[@]}"; do  # the versions this machine (and CI) runs
        v=$("$PY" -c "from importlib.metadata import version; print(version('$d'))") || { echo "gpu_check: $d is not installed here"; return 1; }
        pins+=("$d==$v")
    done
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$WHEELS" "${pins[@]}" || return 1
    git -C "$REPO" describe --always --dirty > "$WHEELS/SOURCE" 2>/dev/null || true
    local missing
    missing=$(check_inputs)
    if [[ -n "$missing" ]]; then
        echo "gpu_check: prepared .whl/ but still missing: ${missing//$'\n'/; }"
        return 1
    fi
    echo "gpu_check: .whl/ ready: $(ls "$WHEELS"/*.whl | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1) (${pins[*]})"
}

# --- phases -------------------------------------------------------------------------------
phase() {  # NAME LIMIT_S COMMAND...: run under timeout, cut to the time left; log a line to phases.tsv
    local name=$1 limit=$2 left t0 rc
    shift 2
    if [[ -n "${GPU_CHECK_PHASES:-}" && " install versions $GPU_CHECK_PHASES " != *" $name "* ]]; then
        return  # a partial rerun: only the phases asked for
    fi
    left=$(( END - $(date +%s) ))
    (( limit > left )) && limit=$left
    if (( limit < 20 )); then
        echo "== $name: not run, ${left}s of the budget left"
        printf '%s\tnot run\t0\t%s\t%s\n' "$name" "$limit" "$*" >> "$WORK/phases.tsv"
        FAILED+=("$name")
        return
    fi
    echo "== $name (limit ${limit}s, $(date +%T)): $*"
    t0=$(date +%s)
    timeout -k 10 "$limit" bash -c '"$@"' _ "$@"  # a new bash: the functions are exported
    rc=$?
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" "$*" >> "$WORK/phases.tsv"
    if (( rc != 0 )); then
        FAILED+=("$name")
        echo "== $name: exit $rc$( (( rc == 124 )) && echo ' (ran out of time)')"
    fi
}

install_packages() {  # the carried wheels the machine lacks, then this package without its dependencies
    local missing
    missing=$("$PY" - "$WHEELS" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
for w in sorted(Path(sys.argv[1]).glob("*.whl")):
    try:
        version(w.name.split("-")[0])
    except PackageNotFoundError:
        print(w)
EOF
)
    echo "carried wheels to install: ${missing:-none}" | tr '\n' ' '; echo
    if [[ -n "$missing" && -z "${REHEARSE:-}" ]]; then
        # shellcheck disable=SC2086  # one path per word
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir $missing || return 1
    fi
    if [[ -z "${REHEARSE:-}" ]]; then
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e "$REPO" \
            || echo "editable install failed; PYTHONPATH=$REPO serves instead"
    fi
    local after
    after=$("$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available())")
    [[ "$after" == "$TORCH_BEFORE" ]] || { echo "torch changed: $TORCH_BEFORE -> $after"; return 1; }
    "$PY" -c "import pynwb, pylsl, zmq, msgpack, onnx, safetensors, typer; print('imports ok; liblsl', pylsl.library_version())"
}

versions() {
    "$PY" -m benchmarks.gpu_check versions --json "$WORK/versions.json"
}

gpu_tests() {  # the GPU tests (-m gpu, both model sizes) in 5 processes at once, one per model group
    # Most of their time is building and exporting artifacts on the CPU, cached per process,
    # so each group builds only its own models'. JUnit XML keeps each outcome and parity error.
    local groups=("lstm" "transformer" "rvq" "mamba or share_state" "wiener or kalman or engine") pids=() rc=0 i
    local extra=()
    "$PY" -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout 120)
    # Out of time: show how far each group got (one line per test) before going.
    trap 'for f in "$WORK"/tests_*.log; do echo "-- $f (cut short):"; cat "$f"; done; exit 124' TERM
    for i in "${!groups[@]}"; do
        "$PY" -m pytest -m gpu -k "${groups[$i]}" -o addopts="" -v -rfEs -p no:cacheprovider \
            -W ignore::DeprecationWarning --junitxml "$WORK/tests_$i.xml" "${extra[@]}" \
            tests/test_backends.py tests/test_engine.py tests/test_models.py > "$WORK/tests_$i.log" 2>&1 &
        pids+=("$!")
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || rc=1
        echo "-- tests -k '${groups[$i]}':"
        cat "$WORK/tests_$i.log"
    done
    return "$rc"
}

spikestream_bench() {  # NAME ARGS...: spikestream bench on $DEVICE into $WORK/NAME
    local name=$1
    shift
    "$PY" -m spikestream bench --device "$DEVICE" --no-scaling --out "$WORK/$name" "$@"
}

runtime_phases() {
    local backend
    backend=$("$PY" -m benchmarks.gpu_check fastest "$WORK/bench" lstm --device "$DEVICE" --default "${STEP_BACKENDS##*,}")
    echo "runtime and end-to-end runs serve lstm on $backend (fastest $DEVICE step measured in phase bench)"
    # --bins 1: the token step section these phases need to start; its rows are not merged.
    phase runtime 150 spikestream_bench runtime --model lstm --backend "$backend" --runtime-backend "$backend" \
        --bins 1 --warmup 10 --no-e2e --no-realpace --replay-speed max,1 --runtime-bins "$REPLAY_BINS" --replay-seconds "$REPLAY_S"
    phase e2e 80 spikestream_bench e2e --model lstm --backend "$backend" --runtime-backend "$backend" --bins 1 \
        --warmup 10 --no-runtime --no-realpace --e2e-bins "$E2E_BINS"
}

run_check() {
    START=$(date +%s)
    END=$(( START + TOTAL_S ))
    FAILED=()
    echo "spikestream GPU check, $(date -u +%FT%TZ), source $(cat "$WHEELS/SOURCE" 2>/dev/null || echo unknown)"
    echo "torch ${TORCH_BEFORE% *}, CUDA available: ${TORCH_BEFORE##* }"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,pstate,temperature.gpu --format=csv 2>&1 | head -n 3
    phase install 60 install_packages
    phase versions 40 versions
    phase tests 150 gpu_tests
    phase bench "${GPU_CHECK_BENCH_S:-240}" spikestream_bench bench --model lstm,transformer,rvq,mamba --backend "$STEP_BACKENDS" \
        --bins "$BINS" --warmup "$WARMUP" --no-runtime --no-e2e --no-realpace
    phase paced 100 spikestream_bench paced --model lstm,transformer,rvq,mamba --backend "$STEP_BACKENDS" \
        --bins "$PACED_BINS" --warmup "$WARMUP" --pace-hz 40 --no-runtime --no-e2e --no-realpace
    runtime_phases
    echo "== phases done in $(( $(date +%s) - START ))s; failed or not run: ${FAILED[*]:-none}"
    (( ${#FAILED[@]} == 0 ))
}

finish() {  # merge into a results folder, pack it, copy at most 8 files to $OUT
    local folder slug_name f n=0
    folder=$(timeout 60 "$PY" -m benchmarks.gpu_check merge "$WORK" "$WORK/results" | tail -n 1)
    if [[ ! -d "$folder" ]]; then
        echo "gpu_check: merging the results failed; the log is $OUT_DIR/gpu_check.log"
        return 1
    fi
    slug_name=$(basename "$folder")
    cp "$OUT_DIR/gpu_check.log" "$folder/gpu_check.log"
    tar -czf "$OUT_DIR/$slug_name.tar.gz" -C "$WORK/results" "$slug_name"
    cp "$folder/report.md" "$folder/results.json" "$OUT_DIR/"
    for f in "step_cdf_$DEVICE.png" "step_paced_cdf_$DEVICE.png" runtime_overhead.png e2e.png; do
        [[ -f "$folder/$f" ]] && (( n < 4 )) && cp "$folder/$f" "$OUT_DIR/" && n=$((n + 1))
    done
    echo "gpu_check: wrote $(ls "$OUT_DIR" | tr '\n' ' ')to $OUT_DIR ($(du -sh "$OUT_DIR" | cut -f1))"
}

main() {
    if [[ "${1:-}" == "--prepare" ]]; then
        prepare
        return
    fi
    local missing
    missing=$(check_inputs)
    TORCH_BEFORE=$("$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available())" 2>/dev/null)
    if [[ "${1:-}" == "--rehearse" ]]; then
        REHEARSE=1 DEVICE=cpu STEP_BACKENDS=torch,torchscript BINS=300 WARMUP=20 PACED_BINS=40 REPLAY_BINS=300
        REPLAY_S=2 E2E_BINS=100 OUT_DIR=${OUT:-$REPO/out/gpu_check_rehearsal}
        [[ -z "$missing" ]] || echo "gpu_check: rehearsing without: ${missing//$'\n'/; }"
        missing=""
    elif [[ "$TORCH_BEFORE" != *" True" ]]; then
        if [[ -n "$missing" ]]; then
            echo "gpu_check: no CUDA here, and inputs are missing: ${missing//$'\n'/; } (run: bash benchmarks/gpu_check.sh --prepare)"
            return 1
        fi
        local why="torch ${TORCH_BEFORE%% *} sees no GPU"
        [[ -n "$TORCH_BEFORE" ]] || why="torch does not import"
        echo "gpu_check: no CUDA here ($why); inputs ok ($(ls "$WHEELS"/*.whl | wc -l) wheels, package, commands); nothing run"
        return 0
    fi
    if [[ -n "$missing" ]]; then
        echo "gpu_check: inputs missing: ${missing//$'\n'/; } (run: bash benchmarks/gpu_check.sh --prepare on the CPU machine, and carry .whl)"
        return 1
    fi
    WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
    export PYTHONUNBUFFERED=1 MPLBACKEND=Agg OMP_NUM_THREADS=1 SPIKESTREAM_CACHE="$WORK/cache"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    # What the phases' fresh bash processes need.
    export PY WHEELS REPO WORK DEVICE TORCH_BEFORE REHEARSE
    export -f install_packages versions gpu_tests spikestream_bench
    mkdir -p "$OUT_DIR"
    rm -f "$OUT_DIR"/{gpu_check.log,report.md,results.json,*.tar.gz,*.png}
    local rc
    run_check 2>&1 | tee "$OUT_DIR/gpu_check.log"
    rc=${PIPESTATUS[0]}
    finish || rc=1
    return "$rc"
}

main "$@"
