"""Dataset preparation: a pure library over iterators of canonical rows (no Celery, no DB).

`pipeline.run_steps` cleans, `split.assign_splits` splits, `tokenize.tokenize_version`
tokenizes with an on-disk cache, `masking.encode_row` is the one place prompt tokens are masked
from the loss, and `preview.model_view` shows rows as the model will see them.
"""
