"""W&B never hangs, prompts or takes a run down: the mode it picks, and the fallbacks."""

from __future__ import annotations

import socket
import time

import pytest

from kdrun.jobs import train
from kdrun.sinks import wandb as wandb_sink

from conftest import compose_config


def refused_url() -> str:
    """A loopback port with nothing listening: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(("configured", "env", "expected"), [
    ("auto", {}, "offline"),                          # no API key: offline, no prompt
    ("online", {}, "offline"),
    ("auto", {"WANDB_MODE": "disabled"}, "disabled"),  # $WANDB_MODE is honoured
    ("auto", {"WANDB_MODE": "offline"}, "offline"),
    ("disabled", {"WANDB_MODE": "online"}, "disabled"),  # an explicit setting wins
])
def test_mode_without_credentials(monkeypatch, configured, env, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert wandb_sink.choose_mode(configured) == expected


def test_a_key_but_an_unreachable_server_logs_offline_within_seconds(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", refused_url())
    start = time.perf_counter()
    assert wandb_sink.choose_mode("auto") == "offline"
    assert time.perf_counter() - start < wandb_sink.REACH_TIMEOUT_S + 1


def test_a_key_and_a_reachable_server_go_online(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert wandb_sink.choose_mode("auto") == "online"


def test_a_failing_wandb_init_does_not_stop_the_run(tmp_path, monkeypatch):
    import wandb

    def broken_init(**_):
        raise RuntimeError("service crashed")

    monkeypatch.setattr(wandb, "init", broken_init)
    results = train(compose_config("logger=wandb", "method=vanilla"), tmp_path)
    assert "test/acc" in results and (tmp_path / "results.json").is_file()


def test_a_server_that_fails_the_start_gets_the_offline_fallback(tmp_path, monkeypatch):
    """Issue 17, item 9: a port that accepts connections but whose W&B fails."""
    import wandb

    real_init = wandb.init
    modes = []

    def failing_online(**kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise RuntimeError("upstream error 500")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb_sink, "choose_mode", lambda configured: "online")
    monkeypatch.setattr(wandb, "init", failing_online)
    train(compose_config("logger=wandb", "method=vanilla"), tmp_path)
    assert modes == ["online", "offline"]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_a_resumed_run_keeps_one_history(tmp_path, monkeypatch):
    """Issue 17, item 6: the same W&B run, each step once in metrics.jsonl, whole-run time."""
    import json

    from kdrun.data import load_dataset
    from kdrun.data.device_loader import num_batches
    from kdrun.runtime import checkpoint

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config("logger=wandb", "method=vanilla", "epochs=3")
    steps = num_batches(len(load_dataset(cfg.dataset, cfg.cache_dir).train),
                        cfg.trainer.batch_size, train=True)
    train(compose_config("logger=wandb", "method=vanilla", "epochs=3",
                         f"trainer.max_steps={steps + 4}"), tmp_path)  # killed mid-epoch 2
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.pt")["progress"]["seconds"]
    resumed = train(compose_config("logger=wandb", "method=vanilla", "epochs=3",
                                   "trainer.resume=true"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    step_rows = [row["step"] for row in rows if "train/img_s_interval" in row]
    epoch_rows = [row["epoch"] for row in rows if "epoch" in row]
    assert step_rows == sorted(set(step_rows)) and epoch_rows == [1, 2, 3]
    assert resumed["train/steps"] == 3 * steps
    # the totals cover all three epochs: epoch 1's seconds and images are counted too
    assert resumed["train/time_s"] > saved > 0
    images = resumed["train/img_s"] * resumed["train/time_s"]
    assert images == pytest.approx(3 * steps * cfg.trainer.batch_size)
    runs = {p.name.rsplit("-", 1)[-1] for p in (tmp_path / "wandb").glob("offline-run-*")}
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2 and len(runs) == 1
