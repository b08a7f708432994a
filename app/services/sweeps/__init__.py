"""Sweeps: a grid or random search over a run's hyperparameters, its trials launched as runs.

- `service`: create, list, inspect, cancel a sweep, and the controller that advances its
  trials when runs finish (`scheduler.on_run_finished`) or on the periodic tick (docs/sweeps.md).

Import the module itself (`from app.services.sweeps import service as sweeps`); this file
re-exports nothing.
"""
