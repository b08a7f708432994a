"""Facts about live updates shared by the worker (publisher) and the web hub (subscriber)."""

RUN_UPDATES_CHANNEL = "llmide:run-updates"
# The worker flushes metrics at most this often, so a point is durable within ~100 ms.
FLUSH_INTERVAL_S = 0.1
