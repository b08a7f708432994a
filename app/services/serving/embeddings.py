"""Embeddings: which model folder a `model` name means, asking the inference server for the
vectors, and OpenAI's `dimensions` and `encoding_format` applied to them."""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from app.core.errors import ValidationFailed
from app.services.registry import base_models
from app.services.serving import inference_client, routing
from app.services.workspaces.access import WorkspaceContext

# Inference-server names of models loaded for embeddings: apart from the same folder loaded
# for generation (the two loads hold different things: hidden states vs. a decoding engine).
KEY_PREFIX = "embed@"


@dataclass(frozen=True)
class EmbeddingTarget:
    key: str
    path: str


def resolve_target(*, session: Session, ctx: WorkspaceContext, name: str) -> EmbeddingTarget:
    """An installed or local base (`package:...`, `local:...`: the packaged MiniLM encoder,
    SmolLM2) by its folder, else whatever chat completions would serve under `name`: a
    registered version (a fine-tuned classifier gives its encoder) or a deployment."""
    if name.startswith((base_models.PACKAGE_PREFIX, base_models.LOCAL_PREFIX)):
        entry = base_models.available().get(name)
        if entry is not None and entry.path:
            path = Path(entry.path)
            return EmbeddingTarget(
                key=KEY_PREFIX + name, path=str(path / entry.gguf_file if entry.gguf_file else path)
            )
    target = routing.resolve_model(session=session, ctx=ctx, name=name)
    return EmbeddingTarget(key=KEY_PREFIX + target.key, path=target.path)


async def embed(
    target: EmbeddingTarget, inputs: list[str] | list[list[int]]
) -> tuple[list[list[float]], int]:
    """Unit-length vectors of the inputs and the tokens they took (InferenceError et al.)."""
    answer = await inference_client.embed(target.key, target.path, inputs)
    return answer["embeddings"], int(answer["prompt_tokens"])


def shortened(vectors: list[list[float]], dimensions: int | None) -> list[list[float]]:
    """The first `dimensions` values of each vector, scaled back to length 1 (OpenAI's way of
    shortening an embedding); more than the model has is refused naming `dimensions`.

    Models trained for it (Matryoshka) keep most of their quality; others lose more.
    """
    if dimensions is None or not vectors:
        return vectors
    native = len(vectors[0])
    if dimensions > native:
        raise ValidationFailed(
            f"dimensions={dimensions} is more than this model's {native}", param="dimensions"
        )
    out = []
    for vector in vectors:
        head = vector[:dimensions]
        norm = math.sqrt(sum(v * v for v in head)) or 1.0
        out.append([v / norm for v in head])
    return out


def encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    """A vector as floats, or as OpenAI's base64 of little-endian float32 values."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
