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


def tensorboard_scalars(folder) -> dict[str, dict[int, float]]:
    """tag -> step -> value, as TensorBoard shows them (purged steps left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    shown: dict[str, dict[int, float]] = {}
    for tag in events.Tags()["scalars"]:
        steps = [e.step for e in events.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: a step shown twice"
        shown[tag] = {e.step: e.value for e in events.Scalars(tag)}
    return shown


def jsonl_rows(run_dir) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def shown_as_logged(run_dir) -> dict[str, dict[int, float]]:
    """TensorBoard's series (each step once), its batch losses those metrics.jsonl logged
    last at each step."""
    shown = tensorboard_scalars(run_dir / "tensorboard")
    rows = [r for r in jsonl_rows(run_dir) if "train/batch_loss" in r]
    assert shown["train/batch_loss"] == pytest.approx(
        {r["step"]: r["train/batch_loss"] for r in rows})
    return shown


def test_tensorboard_scalars_match_metrics_jsonl_step_for_step(tmp_path):
    results = train(compose_config("logger=[tensorboard]", "method=kd", "epochs=2",
                                   "teacher.epochs=1", "eval.plots=true"), tmp_path)
    shown = tensorboard_scalars(tmp_path / "tensorboard")
    rows = jsonl_rows(tmp_path)
    run_rows = [r for r in rows if "step" in r]
    assert run_rows
    for row in run_rows:
        for tag, value in row.items():
            if tag != "step":
                assert shown[tag][row["step"]] == pytest.approx(value, rel=1e-6), tag
    # the final results at the last step, as results/<key>; the teacher trained inside the
    # run has its own series in tensorboard/teacher
    last = max(r["step"] for r in run_rows)
    assert shown["results/test/agreement"] == {last: pytest.approx(results["test/agreement"])}
    teacher_rows = [r for r in rows if "teacher/step" in r]
    teacher = tensorboard_scalars(tmp_path / "tensorboard" / "teacher")
    assert teacher_rows and all(teacher[tag][r["teacher/step"]] == pytest.approx(value)
                                for r in teacher_rows for tag, value in r.items()
                                if tag != "teacher/step")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert "plots/reliability" in events.Tags()["images"]
    assert "config" in " ".join(events.Tags()["tensors"])  # the config as text


def test_a_resumed_run_continues_its_tensorboard_series_without_a_step_twice(tmp_path):
    from kdrun.data import load_dataset
    from kdrun.data.device_loader import num_batches

    cfg = compose_config("logger=[tensorboard,wandb]", "method=vanilla", "epochs=3")
    steps = num_batches(len(load_dataset(cfg.dataset, cfg.cache_dir).train),
                        cfg.trainer.batch_size, train=True)
    train(compose_config("logger=[tensorboard]", "method=vanilla", "epochs=3",
                         f"trainer.max_steps={steps + 4}"), tmp_path)  # killed mid-epoch 2
    before = tensorboard_scalars(tmp_path / "tensorboard")
    assert max(before["train/batch_loss"]) > steps  # steps past the checkpoint were written
    train(compose_config("logger=[tensorboard]", "method=vanilla", "epochs=3",
                         "trainer.resume=true"), tmp_path)
    assert sorted(shown_as_logged(tmp_path)["epoch"].values()) == [1, 2, 3]


def test_a_run_restarted_without_a_checkpoint_purges_what_its_first_attempt_logged(tmp_path):
    """A run killed before its first checkpoint starts again from step 1 in the same folder."""
    first = train(compose_config("logger=[tensorboard]", "method=vanilla", "epochs=1",
                                 "trainer.max_steps=4"), tmp_path)
    assert first["train/steps"] == 4
    (tmp_path / "results.json").unlink()  # as if killed before it ended, without a checkpoint
    (tmp_path / "checkpoints" / "last.pt").unlink(missing_ok=True)
    train(compose_config("logger=[tensorboard]", "method=vanilla", "epochs=1",
                         "trainer.resume=true"), tmp_path)
    shown_as_logged(tmp_path)


def test_both_loggers_at_once_and_none(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_config("logger=[wandb,tensorboard]", "method=vanilla")
    assert sorted(cfg.logger) == ["tensorboard", "wandb"]
    train(cfg, tmp_path / "both")
    assert list((tmp_path / "both" / "wandb").glob("offline-run-*"))
    assert list((tmp_path / "both" / "tensorboard").glob("events.out.tfevents.*"))
    for none in ("logger=none", "logger=[]"):
        assert dict(compose_config(none).logger) == {}


def test_an_unknown_logger_is_one_line_before_any_work():
    from kdrun.errors import ConfigError
    from kdrun.validate import validate

    cfg = compose_config("logger=none", "+logger.neptune={}")
    with pytest.raises(ConfigError, match="^logger=neptune is not a known logger: choose one of "
                                          "tensorboard, wandb$"):
        validate(cfg)
    with pytest.raises(ConfigError, match="logger.tensorboard.flush_secs=0 is not allowed"):
        validate(compose_config("logger=tensorboard", "logger.tensorboard.flush_secs=0"))
