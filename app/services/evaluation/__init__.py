"""Evaluation beyond a single registered version's metrics: one package in the services layer.

- `arena`: blind side-by-side votes between two chat models of a workspace and the
  leaderboard they make (Bradley–Terry strengths on the Elo scale);
- `arena_preferences`: the arena's decisive votes as a preference dataset (for DPO);
- `harness_tasks`: an uploaded benchmark file (multiple choice or generation) checked row by
  row and stored as the canonical rows the worker's lm-evaluation-harness run reads;
- `cross_validation`: k fold runs of one configuration, their metrics per fold and as
  mean ± std, and the chosen model registered.

A version's own evaluations (on a dataset, a harness task file, as a judge) are queued by
`app.services.registry.evaluations`, which reads `harness_tasks` and `arena` from here.

Import the modules themselves (`from app.services.evaluation import arena`); this file
re-exports nothing, so importing one module never loads the others.
"""
