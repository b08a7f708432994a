"""Dataset preparation: a pure library over iterators of canonical rows (no Celery, no DB).

`pipeline.run_steps` cleans, `split.assign_splits` splits, `tokenize.tokenize_version`
tokenizes with an on-disk cache, `masking.encode_row` renders a row of any schema and labels it
with the engine's `loss_mask` (the one place that decides what the loss counts), and
`preview.model_view` shows rows as the model will see them.
"""
