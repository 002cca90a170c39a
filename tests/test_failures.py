"""What a user sees when something goes wrong (issue 17), through the real CLI: broken
checkpoint files, non-finite settings and losses, Ctrl-C, and the leftovers of a killed save.
Each case is one line on the console and in error.txt, never a traceback."""

from __future__ import annotations

import os
import pickle
import shlex
import signal
import subprocess
import sys

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


# Ctrl-C at a known point: the real `kdrun` entry point, in a process that sends itself SIGINT
# as soon as epoch 1's checkpoint is written (not when a poll happens to see the file). Its
# SIGINT is the default, as in a terminal's foreground job: a job that a non-interactive shell
# starts in the background inherits SIGINT ignored, and Python keeps it so.
INTERRUPT_AFTER_FIRST_CHECKPOINT = """
import os, signal, sys
from kdrun.cli import main
from kdrun.training.trainer import Trainer

save = Trainer._save

def save_then_interrupt(self, *args):
    save(self, *args)
    os.kill(os.getpid(), signal.SIGINT)

Trainer._save = save_then_interrupt
sys.argv = ["kdrun", *sys.argv[1:]]
main()
"""


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume_it(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    args = [*TINY, "method=vanilla", "epochs=40", "trainer.log_every=1",
            f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_AFTER_FIRST_CHECKPOINT, *args],
                          env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          preexec_fn=default_sigint)
    assert proc.returncode == 130, proc.stderr[-2000:]
    errors = error_lines(proc)
    assert len(errors) == 1 and "training interrupted in epoch 2 of 40" in errors[0], \
        proc.stderr[-2000:]
    assert "its last checkpoint is epoch 1" in errors[0]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert "training interrupted in epoch 2" in (run_dir / "error.txt").read_text()
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


def test_every_way_torch_load_fails_on_a_cut_file_is_one_line(tmp_path):
    from kdrun.errors import CheckpointError
    from kdrun.models import build_model
    from kdrun.runtime.checkpoint import load

    model = build_model("resnet8", 10, [0.5] * 3, [0.5] * 3)
    whole = tmp_path / "whole.pt"
    torch.save({"arch": "resnet8", "state_dict": model.net.state_dict()}, whole)
    data, cut = whole.read_bytes(), tmp_path / "cut.pt"
    raised = set()
    for size in range(0, len(data), len(data) // 400):  # where a full disk or a kill stops it
        cut.write_bytes(data[:size])
        with pytest.raises(Exception) as by_torch:
            torch.load(cut, weights_only=True)
        raised.add(type(by_torch.value))
        with pytest.raises(CheckpointError, match=f"^{cut} is (truncated|not a PyTorch)"):
            load(cut)
    assert {EOFError, RuntimeError, OSError} <= raised  # OSError: [Errno 22] Invalid argument


HOLD_RUN_DIRECTORY = """
import sys, time
from pathlib import Path
from kdrun.runtime.run_directory import claimed

with claimed(Path(sys.argv[1]), resume=False):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_run_directory_held_by_a_live_run_is_refused_and_a_killed_runs_is_not(tmp_path,
                                                                              cli_env):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN_DIRECTORY, str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        refused = kdrun(*TINY, f"hydra.run.dir={run_dir}", env=cli_env, cwd=tmp_path)
        assert refused.returncode == 1
        assert error_lines(refused) and len(error_lines(refused)) == 1
        assert f"{run_dir} is in use by another run (process {holder.pid} on " in \
            error_lines(refused)[0]
        assert "choose another hydra.run.dir" in error_lines(refused)[0]
        assert not (run_dir / "error.txt").exists() and not (run_dir / "config.yaml").exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the lock file stays behind
        holder.wait()
    assert (run_dir / ".kdrun.lock").exists()
    proc = kdrun(*TINY, f"hydra.run.dir={run_dir}", env=cli_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 0 <= read_results(run_dir)["test/acc"] <= 100


@pytest.mark.slow
def test_a_second_run_into_a_finished_runs_directory_mixes_nothing(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    first = kdrun(*TINY, "epochs=2", f"hydra.run.dir={run_dir}", env=cli_env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    kept = {name: (run_dir / name).read_bytes() for name in ("results.json", "metrics.jsonl")}
    second = kdrun(*TINY, "epochs=3", "seed=1", f"hydra.run.dir={run_dir}", env=cli_env,
                   cwd=tmp_path)
    assert second.returncode == 1
    assert len(error_lines(second)) == 1
    assert f"{run_dir} already holds a run (results.json): continue it with " \
           f"trainer.resume=true hydra.run.dir={run_dir}" in error_lines(second)[0]
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    assert not (run_dir / "error.txt").exists()


@pytest.mark.slow
def test_runs_started_together_get_directories_of_their_own(tmp_path, cli_env):
    procs = [subprocess.Popen(["kdrun", *TINY], env=cli_env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    run_dirs = sorted(p.parent for p in (tmp_path / "outputs").glob("*/*/results.json"))
    assert len(run_dirs) == 2
    assert {d.name.rsplit("-", 1)[1] for d in run_dirs} == {str(p.pid) for p in procs}


@pytest.mark.slow
def test_a_missing_evaluation_set_with_settings_of_its_own_is_one_line_naming_its_role(
        tmp_path, cli_env):
    proc = kdrun(*TINY, f"+eval.ood.far.svhn={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/run",
                 env=cli_env, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(error_lines(proc)) == 1
    assert f"eval.ood.far.svhn: SVHN not found in {tmp_path}/nowhere" in error_lines(proc)[0]
