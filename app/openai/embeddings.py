"""OpenAI `embeddings`: vectors of texts or token arrays from encoders and decoders."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep, Workspace
from app.openai.common import inference_error
from app.openai.schemas import Embedding, EmbeddingCreate, EmbeddingList, EmbeddingUsage
from app.services.serving import embeddings, inference_client
from app.services.serving.embeddings import EmbeddingTarget

router = APIRouter(prefix="/v1/embeddings", tags=["openai: embeddings"])


@router.post("", response_model=EmbeddingList)
async def create_embeddings(
    body: EmbeddingCreate, session: SessionDep, ctx: Workspace
) -> EmbeddingList:
    inputs = body.inputs()

    def resolve() -> EmbeddingTarget:
        target = embeddings.resolve_target(session=session, ctx=ctx, name=body.model)
        session.commit()  # give the connection back: a first load can take a while
        return target

    target = await run_in_threadpool(resolve)
    try:
        vectors, tokens = await embeddings.embed(target, inputs)
    except (inference_client.InferenceUnavailable, inference_client.InferenceError) as exc:
        raise inference_error(exc) from exc
    vectors = embeddings.shortened(vectors, body.dimensions)
    return EmbeddingList(
        data=[
            Embedding(index=i, embedding=embeddings.encoded(v, body.encoding_format))
            for i, v in enumerate(vectors)
        ],
        model=body.model,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
