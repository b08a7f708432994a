"""Datasets: one package for everything a dataset is in the services layer.

- `intake`: an upload becomes a dataset and its version 1 (hashing, duplicates, storage);
- `service`: list, preview, download, delete (what users do; scoped to the workspace);
- `versions`: the immutable versions of a dataset, and the one a run trains on;
- `access`: a dataset or one of its versions for a caller, with the role the action needs
  (`get_for_member`, `get_for_editor`, `get_version_for_member`, `get_version_for_editor`);
- `prep`: a new version prepared from a parent and a recipe by a worker, and the model view;
- `ingest`: the streaming pass from an uploaded file to canonical JSONL (no database), built
  from `formats` (which format a file is), `readers` (one per format), `detection` (the
  schema and column map), `converters` (a record to a canonical row) and `stats`.

Import the modules themselves (`from app.services.datasets import versions as
dataset_versions`); this file re-exports nothing, so importing one module never loads the
others.
"""
