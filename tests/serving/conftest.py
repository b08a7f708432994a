"""Serving fixtures: the real inference process beside the in-process web app, and registered
model versions whose folders hold tiny from-scratch models (nothing downloaded)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Team
from tests.inference.test_inference_server import (
    REPO_ROOT,
    build_tiny_model,
    free_port,
    wait_healthy,
)
from tests.openai.conftest import (  # noqa: F401 - openai_for is a fixture re-exported here
    create_job,
    finish_like_the_worker,
    openai_for,
    run_id_of,
    upload_file,
)

TOKEN_HEADER = "X-LLMIDE-Internal"


@pytest.fixture
def serving_env(installation: Path) -> Iterator[int]:
    """The inference port and quick serving timings, set before the web app is created."""
    from app.core.settings import get_settings

    port = free_port()
    os.environ["LLMIDE_INFERENCE_PORT"] = str(port)
    os.environ["LLMIDE_DEPLOYMENT_DRAIN_S"] = "1"
    os.environ["LLMIDE_DEPLOYMENT_RECONCILE_INTERVAL_S"] = "0.5"
    get_settings.cache_clear()
    yield port
    get_settings.cache_clear()


@contextmanager
def inference_process(data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m workers.inference` on `port`, sharing the installation's data dir (and token)."""
    env = {
        **os.environ,
        "LLMIDE_DATA_DIR": str(data_dir),
        "LLMIDE_INFERENCE_PORT": str(port),
        "PYTHONPATH": str(REPO_ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.inference"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(process, port)
        yield process
    finally:
        process.kill()
        process.wait()


def inference_get(port: int, path: str) -> httpx.Response:
    from app.core.settings import get_settings

    return httpx.get(
        f"http://127.0.0.1:{port}{path}",
        headers={TOKEN_HEADER: get_settings().internal_token},
        timeout=10,
    )


def build_tiny_classifier(folder: Path) -> None:
    """A 1-layer BERT sequence classifier (labels negative/positive) with a trained tokenizer."""
    import tempfile

    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    with tempfile.TemporaryDirectory() as scratch:
        build_tiny_model(Path(scratch))
        tokenizer = AutoTokenizer.from_pretrained(scratch)
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        pad_token_id=tokenizer.pad_token_id,
    )
    model = BertForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)


RegisterVersion = Callable[..., dict[str, Any]]


@pytest.fixture
def register_version(team: Team) -> RegisterVersion:
    """Register a version in the owner's workspace whose folder holds the model `build` makes."""
    from app.services import artifacts

    def register(build: Callable[[Path], None] = build_tiny_model) -> dict[str, Any]:
        job = create_job(team.owner, upload_file(team.owner))
        run_id = run_id_of(job["id"])
        finish_like_the_worker(run_id)
        build(artifacts.resolve(f"runs/{run_id}/final"))
        models = team.owner.get("/api/v1/models").json()
        versions = [v for m in models for v in m["versions"] if v.get("run_id") == run_id]
        assert len(versions) == 1, models
        return dict(versions[0])

    return register


# The entities the hand-built NER model knows, by token: a first token starts an entity, the
# next continues it. Every other token (and [UNK]) is O.
NER_TOKENS = {
    "李": "B-PER",
    "明": "I-PER",
    "北": "B-LOC",
    "京": "I-LOC",
    "ada": "B-PER",
    "london": "B-LOC",
}
NER_TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def build_tiny_ner_model(folder: Path) -> None:
    """A BERT token classifier whose answer is known in advance: no encoder layer, so each
    token's logits depend on its own id only, and the embeddings and classifier are set so
    each token of NER_TOKENS gets its tag and every other one O. Its WordPiece tokenizer (a
    fast one: offset mappings) splits Chinese into characters like BERT's."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [*NER_TOKENS, "在", "工", "作", "住", "，", "。", "lives", "in", "the", "city"]
    tokenizer = BertTokenizerFast(
        vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True
    )
    width = len(NER_TAGS) * 2
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        num_hidden_layers=0,
        num_attention_heads=1,
        intermediate_size=width,
        max_position_embeddings=64,
        type_vocab_size=1,
        num_labels=len(NER_TAGS),
        id2label=dict(enumerate(NER_TAGS)),
        label2id={tag: i for i, tag in enumerate(NER_TAGS)},
        pad_token_id=0,
        hidden_dropout_prob=0.0,
    )
    model = BertForTokenClassification(config)
    with torch.no_grad():
        embeddings = model.bert.embeddings
        embeddings.position_embeddings.weight.zero_()
        embeddings.token_type_embeddings.weight.zero_()
        words = torch.zeros(len(vocab), width)
        for token_id, token in enumerate(vocab):
            tag = NER_TOKENS.get(token, "O")
            words[token_id, NER_TAGS.index(tag)] = 10.0  # one hot: LayerNorm keeps the peak
        embeddings.word_embeddings.weight.copy_(words)
        model.classifier.weight.copy_(torch.eye(len(NER_TAGS), width) * 5.0)
        model.classifier.bias.zero_()
    model.architectures = None
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)
