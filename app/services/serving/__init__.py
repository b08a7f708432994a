"""Serving: model versions loaded in the inference server process and reached by name.

The web process only records and routes; the weights live in the inference server, which these
modules drive over HTTP (docs/serving.md).

- `deployments`: a deployment's records (create, settings, a redeploy's pending version, stop)
  and the workspace's lists; `access`: one deployment for a caller, with the role checked;
- `control`: deploy, scale, redeploy and stop, each recorded and then asked of the server;
- `reconcile`: the records brought in line with what the server holds (restarts, failed loads
  retried, a redeploy's switch), periodically and on demand;
- `targets`: what the server is asked to load for a version and its deployment's settings;
  `routing`: what a `model` name means (deployment, version, checkpoint, packaged base);
- `classifiers`: labels and scores from a deployed classifier; `embeddings`: an embeddings
  `model` name's folder and the vectors' OpenAI shape;
- `stats`: each deployment's live figures; `metrics`: the facade's Prometheus series and the
  request counts the figures show;
- `inference_client`: the web side's HTTP client of the inference server (httpx, never torch).

Import the modules themselves (`from app.services.serving import control as
deployment_control`); this file re-exports nothing, so importing one module never loads the
others.
"""
