"""W&B never hangs, prompts or takes a run down: the mode it picks, and the fallbacks."""

from __future__ import annotations

import socket
import time

import pytest

from kdrun.cli import train
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
