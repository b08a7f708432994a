"""Serving: model versions loaded in the inference server process and reached by name.

- `inference_client`: the web side's HTTP client of the inference server (httpx, never torch);
- `metrics`: the OpenAI facade's Prometheus series per deployment, and the request counts the
  deployments page shows;
- `embeddings`: which folder an embeddings `model` name means, and the vectors' OpenAI shape.

Import the modules themselves (`from app.services.serving import metrics as serving_metrics`);
this file re-exports nothing, so importing one module never loads the others.
"""
