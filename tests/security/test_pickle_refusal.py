"""No pickle is ever loaded: model folders holding a pickle that would run code are refused.

The pickle is a real exploit: unpickling it calls `pathlib.Path.touch(marker)`. The marker file
appearing would mean some loader unpickled it; it must never appear. The inference server runs
in-process, as in tests/inference.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings

ONLY_SAFE = "only safetensors or GGUF weights are loaded"


class TouchOnLoad:
    """Pickles into a call of Path.touch(marker): code run by merely unpickling."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (pathlib.Path.touch, (self.marker,))


def exploit(marker: Path) -> bytes:
    return pickle.dumps(TouchOnLoad(marker))


@dataclass
class Lab:
    client: TestClient
    root: Path  # the artifact root
    marker: Path


def _tiny_tokenizer(folder: Path) -> None:
    """A real tokenizer, so a load gets past it to the weights (nothing is downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"])
    bpe.train_from_iterator(["the cat sat on the mat", "a dog ran in the park"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)


def _gpt2_config(vocab_size: int) -> str:
    return json.dumps(
        {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": vocab_size,
            "n_layer": 1,
            "n_head": 2,
            "n_embd": 16,
            "n_positions": 32,
        }
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from workers.inference.server import TOKEN_HEADER, create_app

    base = tmp_path_factory.mktemp("pickles")
    settings = Settings(data_dir=base / "data")
    settings.ensure_dirs()
    root = settings.artifact_root
    marker = base / "PWNED"
    for name in ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt", "weights.pkl"):
        folder = root / "models" / f"only-{name.replace('.', '-')}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(_gpt2_config(300))
        (folder / name).write_bytes(exploit(marker))
    # A folder that passes the path check (it has a .safetensors file) but whose
    # "safetensors" is the exploit too, with the pickle checkpoint beside it.
    disguised = root / "models" / "disguised"
    disguised.mkdir(parents=True)
    _tiny_tokenizer(disguised)
    (disguised / "config.json").write_text(_gpt2_config(300))
    (disguised / "model.safetensors").write_bytes(exploit(marker))
    (disguised / "pytorch_model.bin").write_bytes(exploit(marker))
    app = create_app(settings=settings, load_wait_s=30)
    with TestClient(app, headers={TOKEN_HEADER: settings.internal_token}) as client:
        yield Lab(client, root, marker)
    assert not marker.exists(), "a pickle was unpickled"


def test_the_planted_pickle_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    """The exploit is live (checked on a marker of its own), so its refusal means something."""
    control = tmp_path / "control-marker"
    pickle.loads(exploit(control))  # noqa: S301 - the point: show that this runs code
    assert control.exists()


@pytest.mark.parametrize(
    "folder",
    [
        "only-pytorch_model-bin",
        "only-model-pt",
        "only-model-pth",
        "only-model-ckpt",
        "only-weights-pkl",
    ],
)
def test_a_model_folder_with_only_pickle_weights_is_refused_with_a_clear_message(
    lab: Lab, folder: str
) -> None:
    path = f"models/{folder}"
    answer = lab.client.put(f"/models/{folder}", json={"path": path})
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert "pickle" in detail and ONLY_SAFE in detail
    on_demand = lab.client.post("/generate", json={"name": folder, "path": path, "prompt": "hi"})
    assert on_demand.status_code == 400 and ONLY_SAFE in on_demand.json()["detail"]
    absolute = lab.client.put(f"/models/{folder}", json={"path": str(lab.root / path)})
    assert absolute.status_code == 400
    assert lab.client.get(f"/models/{folder}").status_code == 404
    assert not lab.marker.exists()


def test_a_pickle_beside_unreadable_safetensors_is_never_the_fallback(lab: Lab) -> None:
    """The loader insists on safetensors: a bad .safetensors fails the load, it does not fall
    back to the pytorch_model.bin beside it (and never unpickles the .safetensors either)."""
    started = lab.client.put("/models/disguised", json={"path": "models/disguised"})
    assert started.status_code in (200, 202), started.text
    deadline = time.monotonic() + 60
    status = started.json()
    while status["status"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.05)
        status = lab.client.get("/models/disguised").json()
    assert status["status"] == "failed", status
    assert "safetensors" in status["error"].lower() or "header" in status["error"].lower(), status
    generated = lab.client.post("/generate", json={"name": "disguised", "prompt": "hi"})
    assert generated.status_code == 424  # a failed load: waiting mends nothing (docs/serving.md)
    assert not lab.marker.exists(), "the loader unpickled a checkpoint"
