"""What a user sees when something goes wrong (issue 17), through the real CLI: broken
checkpoint files, non-finite settings and losses, Ctrl-C, and the leftovers of a killed save.
Each case is one line on the console and in error.txt, never a traceback."""

from __future__ import annotations

import os
import pickle
import shlex
import signal
import subprocess
import time

import pytest
import torch

from conftest import TINY, read_results


def kdrun(*args: str, env, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["kdrun", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this should never run",))


def broken_file(kind: str, folder) -> str:
    path = folder / f"{kind}.pt"
    if kind == "truncated":
        torch.save({"arch": "resnet8", "state_dict": {"w": torch.ones(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "random":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "code":
        torch.save({"arch": "resnet8", "state_dict": RunsCode()}, path, pickle_protocol=2)
    elif kind == "tensor":
        torch.save(torch.ones(3), path)
    elif kind == "directory":
        path.mkdir()
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "key", "message"), [
    ("truncated", "teacher.checkpoint", "truncated.pt is truncated or not a PyTorch checkpoint"),
    ("code", "teacher.checkpoint",
     "code.pt holds Python objects besides weights (posix.system), which kdrun refuses to load"),
    ("directory", "teacher.checkpoint", "directory.pt is a directory, not a file"),
    ("random", "checkpoint", "random.pt is not a PyTorch checkpoint"),
    ("tensor", "checkpoint", "tensor.pt is a PyTorch file but not a kdrun model file"),
])
def test_a_broken_checkpoint_is_one_line_naming_the_file(tmp_path, cli_env, kind, key, message):
    path = broken_file(kind, tmp_path)
    mode = ["mode=eval"] if key == "checkpoint" else ["method=kd"]
    proc = kdrun(*TINY, *mode, f"{key}={path}", f"hydra.run.dir={tmp_path}/run", env=cli_env,
                 cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    errors = error_lines(proc)
    assert len(errors) == 1 and message in errors[0], output[-2000:]
    assert "Traceback" not in output and "weights_only=False" not in output
    assert "this should never run" not in output
    assert message in (tmp_path / "run" / "error.txt").read_text()


@pytest.mark.slow
def test_a_diverging_loss_stops_the_run_with_one_line_and_no_checkpoint(tmp_path, cli_env):
    proc = kdrun(*TINY, "method=kd", "epochs=3", "optim.lr=1e30",
                 f"hydra.run.dir={tmp_path}/run", env=cli_env, cwd=tmp_path)
    assert proc.returncode == 1
    errors = error_lines(proc)
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "training diverged in epoch 1 by step" in errors[0]
    assert "loss nan" in errors[0] and "kd nan" in errors[0]  # each term that went wrong
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert "training diverged" in (tmp_path / "run" / "error.txt").read_text()


@pytest.mark.slow
def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume_it(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    args = ["kdrun", *TINY, "method=vanilla", "epochs=40", "trainer.log_every=1",
            f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "checkpoints" / "last.pt").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    errors = [line for line in (stdout + stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "training interrupted in epoch" in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "training interrupted in epoch" in (run_dir / "error.txt").read_text()
    command = errors[0].split("resume with: ", 1)[1]
    assert "trainer.resume=true" in command and f"hydra.run.dir={run_dir}" in command
    resumed = subprocess.run(shlex.split(command), env=cli_env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert 0 <= read_results(run_dir)["test/acc"] <= 100


def test_a_killed_save_leaves_no_temporary_file_behind(tmp_path):
    from kdrun.jobs import train

    from conftest import compose_config

    stale = tmp_path / "checkpoints" / ".last.pt.tmp4242"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")  # what a kill during torch.save leaves
    train(compose_config("method=vanilla"), tmp_path)
    assert not stale.exists()
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"last.pt", "student.pt"}


def test_a_loadable_checkpoint_never_unpickles_code(tmp_path):
    from kdrun.errors import CheckpointError
    from kdrun.runtime.checkpoint import load

    path = broken_file("code", tmp_path)
    with pytest.raises(CheckpointError, match="refuses to load"):
        load(path)
    with pytest.raises(pickle.UnpicklingError):  # what torch alone would say
        torch.load(path, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_a_run_directory_under_a_file_is_one_line(tmp_path, cli_env, key):
    (tmp_path / "notes.txt").write_text("a file")
    sweep = ["-m"] if key == "hydra.sweep.dir" else []
    proc = kdrun(*sweep, *TINY, f"{key}={tmp_path}/notes.txt/run", env=cli_env, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"kdrun: {key}={tmp_path}/notes.txt/run lies under "
                                   f"{tmp_path}/notes.txt, which is a file: choose a directory "
                                   f"elsewhere, e.g. {key}=outputs/NAME")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_run_directory_is_named_before_hydra_touches_it(tmp_path):
    from kdrun.cli import unusable_output_dir

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    problem = unusable_output_dir([f"hydra.run.dir={locked}/run"])
    assert problem.startswith(f"hydra.run.dir={locked}/run cannot be written ({locked} is not")


@pytest.mark.slow
def test_a_missing_data_set_opens_no_wandb_run(tmp_path, cli_env):
    tiny = [o for o in TINY if not o.startswith(("dataset=", "logger="))]
    proc = kdrun(*tiny, "dataset=cifar10", f"dataset.root={tmp_path}/nowhere", "logger=wandb",
                 f"hydra.run.dir={tmp_path}/run", env={**cli_env, "WANDB_MODE": "offline"},
                 cwd=tmp_path)
    assert proc.returncode == 1 and "CIFAR-10 not found" in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "wandb").exists()
