"""A ~50 MB upload is ingested as a stream: the process's peak memory grows by far less than
the file's size (measured in a fresh subprocess with getrusage, not a wall-clock figure)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FILE_MB = 50
# Peak RSS growth allowed while ingesting the 50 MB file. Streaming needs a few MB of buffers
# plus the duplicate-detection hashes; loading the file whole would take several times 50 MB.
BOUND_MB = 200

SCRIPT = r"""
import json, resource, sys
from pathlib import Path
from app.services.datasets import ingest, readers

src, out = Path(sys.argv[1]), Path(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
limits = readers.Limits(
    max_line_bytes=1 << 20, max_rows=10_000_000, max_decompressed_bytes=1 << 31,
    max_document_bytes=1 << 24,
)
with out.open("wb") as canonical, (out.parent / "rejected.jsonl").open("wb") as rejected:
    result = ingest.ingest(
        path=src, filename=src.name, options=ingest.IngestOptions(), limits=limits,
        canonical=canonical, rejected=rejected,
    )
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": result.num_rows, "schema": result.schema,
                  "growth_mb": (after - before) / 1024}))
"""


def _write_chat_file(path: Path, target_bytes: int) -> int:
    rows = 0
    written = 0
    with path.open("w", encoding="utf-8") as handle:
        while written < target_bytes:
            user = f"问题 {rows}: " + "请解释一下这个概念。" * 40
            answer = f"Answer {rows}: " + "the model learns from data and text. " * 40
            line = json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": user},
                        {"role": "assistant", "content": answer},
                    ]
                },
                ensure_ascii=False,
            )
            handle.write(line + "\n")
            written += len(line.encode()) + 1
            rows += 1
    return rows


def test_a_50_mb_file_is_ingested_with_bounded_memory(tmp_path: Path) -> None:
    source = tmp_path / "big.jsonl"
    rows = _write_chat_file(source, FILE_MB * 1024 * 1024)
    assert source.stat().st_size >= FILE_MB * 1024 * 1024
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(source), str(tmp_path / "canonical.jsonl")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rows"] == rows and report["schema"] == "chat"
    assert report["growth_mb"] < BOUND_MB, report
