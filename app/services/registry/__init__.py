"""The model registry: one package for everything a model is in the services layer.

- `access`: finding a version, model, export or evaluation for a caller, with the role the
  action needs (`get_version_for_member`, `get_version_for_editor`, ...);
- `versions`: the workspace's registered models and versions listed, counted and found, and a
  version's tags;
- `registration`: a checkpoint registered as the next version (content hash, code version,
  lineage) and the names it gets;
- `stages`: moving a version between stages, the production gate, the history of moves;
- `imports`: registering a model that has no run (a Hugging Face folder or a GGUF file, by
  path or upload); `import_checks`: what its files must be (pickles refused);
  `zip_extract`: unpacking an uploaded zip of a model folder safely;
- `files`: which files make a model folder, and streaming one out as a zip;
- `exports`, `evaluations`: exporting a version (ONNX, merged LoRA, GGUF) and evaluating it
  (on a dataset, a harness task file, as a judge), checked before the job is queued;
- `jobs`: an export's or evaluation's job sent to a worker, and the worker's status updates;
- `compare`: a model's versions side by side on the same evaluations;
- `kind`, `gguf`, `prompt_fit`: what a version's own files say (classifier or generator,
  exportable to llama.cpp, whether a prompt fits its context);
- `base_models`: the base models this server offers for new runs (scratch, local, packaged,
  hub); `version_bases`: a registered version as the base of a new run.

Import the modules themselves (`from app.services.registry import versions as registry`); this
file re-exports nothing, so importing one module never loads the others.
"""
