"""Runs: one package for everything a training run is in the services layer.

- `service`: launch, list, inspect, cancel, resume (what users do; scoped to the workspace);
- `queue`: priorities, reordering, fair share, quotas and dispatch (docs/queue.md);
- `execution`: what a worker does to a run's records (claim, progress, checkpoints, finish);
- `config`, `presets`, `spec`: the hyperparameters, per-base recipes and the run-as-a-document;
- `timeline`, `compare`: a run's events as one timeline, and comparing runs.
- `results`: a finished run's step metrics as the CSV of its OpenAI job's result file.

Import the modules themselves (`from app.services.runs import service as runs`); this file
re-exports nothing, so importing one module never loads the others.
"""
