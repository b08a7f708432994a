"""Which installation a process belongs to, so two on one machine never mix.

Two `llmide serve` on one machine (a second data folder, another LLMIDE_PORT) each start an
inference server. The port is chosen per installation (app/supervisor.choose_inference_port);
and should a web process still reach another installation's server (a port set by hand, a
stale process), the two refuse each other: the internal token is derived from the
installation id (Settings.internal_token), so the server answers 401 before acting, and every
answer carries the server's installation id, which the web's client checks
(app/services/serving/inference_client.py) to say what is wrong.
"""

from __future__ import annotations

INSTANCE_HEADER = "X-LLMIDE-Instance"


def foreign_server_message(base_url: str) -> str:
    return (
        f"the inference server at {base_url} belongs to another LLM IDE installation (another "
        "data folder); this installation's inference server is not running there: check "
        "LLMIDE_INFERENCE_PORT / LLMIDE_INFERENCE_URL, or let `llmide serve` choose the port"
    )
