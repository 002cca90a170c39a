"""scripts/bench.py: kdrun's training step and the reference loop timed side by side, on a tiny
ImageFolder tree, with the evaluation timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_data import write_image_folder

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
CLASSES = [f"class{i}" for i in range(10)]


def bench(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bench_times_both_loops_and_the_evaluation(tmp_path, cli_env):
    write_image_folder(tmp_path / "data" / "train", CLASSES, 4)
    write_image_folder(tmp_path / "data" / "test", CLASSES, 2)
    proc = bench("method=kd", "teacher=resnet8", "student=resnet8", "dataset=cifar10",
                 f"dataset.root={tmp_path / 'data'}", "trainer.batch_size=8",
                 "trainer.device=cpu", "bench.steps=3", "bench.warmup=1", "bench.workers=0",
                 "bench.eval_images=8", "eval=standard", "eval.attacks.pgd_linf.steps=2",
                 "eval.corruptions.names=[gaussian_noise,contrast]",
                 "eval.corruptions.severities=[1,5]", "+eval.ood.far.synthetic=null",
                 "+eval.ood.scores=[msp,knn]", "+eval.ood.settings.knn.k=3", cwd=tmp_path,
                 env=cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file()
                     and not {"data", "cache"} & set(p.relative_to(tmp_path).parts))
    run_dir = written[0].parent  # everything in one run directory, and its path printed
    assert run_dir.parent.parent == tmp_path / "outputs" / "bench"
    assert all(p.parent == run_dir for p in written), written
    assert f"results: {run_dir / 'bench.json'}" in proc.stdout
    result = json.loads((run_dir / "bench.json").read_text())
    assert result["ours_img_s"] > 0 and result["ref_img_s"] > 0
    assert result["ratio"] == pytest.approx(result["ours_img_s"] / result["ref_img_s"])
    assert result["eval_images"] == 8  # each configured evaluation timed on them
    assert all(result[f"eval_{name}_s"] > 0 for name in ("attacks", "corruptions", "ood"))
    assert "evaluations on 8 test images: attacks" in proc.stdout
    assert (result["method"], result["teacher"], result["student"]) == ("kd", "resnet8", "resnet8")
    assert "| ours |" in proc.stdout and "| ref |" in proc.stdout


def test_bench_refuses_an_unknown_setting_in_one_line(tmp_path, cli_env):
    proc = bench("bench.stpes=3", cwd=tmp_path, env=cli_env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: bench.stpes is not a benchmark setting: use one of bench.steps, bench.warmup, "
        "bench.compile, bench.graph, bench.reference, bench.workers, bench.eval_images, "
        "bench.synthesis, bench.pack"]


def test_bench_times_a_data_free_methods_synthesis_and_refuses_other_methods(tmp_path, cli_env):
    tiny = ("teacher=resnet8", "student=resnet8", "dataset=synthetic", "trainer.device=cpu",
            "method.batch_size=8", "bench.synthesis=4")
    proc = bench("method=adaptive_deepinversion", *tiny, f"hydra.run.dir={tmp_path}/run",
                 cwd=tmp_path, env=cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert result["ours_img_iter_s"] > 0 and "ours_img_s" not in result
    assert (result["synthesis_batch"], result["synthesis_iterations"]) == (8, 4)
    assert "image-iterations/s" in proc.stdout
    proc = bench("method=kd", *tiny[:-2], "bench.synthesis=4", cwd=tmp_path, env=cli_env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: bench.synthesis times a data-free method's synthesis, and method=kd has none: "
        "use method=deepinversion, adaptive_deepinversion or deepdream"]


def test_bench_times_a_pack_beside_its_lone_job(tmp_path, cli_env):
    write_image_folder(tmp_path / "data" / "train", CLASSES, 4)
    write_image_folder(tmp_path / "data" / "test", CLASSES, 1)
    common = ["method=soft_randomization", "teacher=resnet8", "student=resnet8",
              "dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "trainer.batch_size=8",
              "trainer.device=cpu", "bench.steps=2", "bench.warmup=1", "bench.reference=false"]
    proc = bench(*common, "bench.pack=3", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path,
                 env=cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert result["pack"] == 3 and result["ours_pack3_img_s"] > 0
    assert result["pack_speedup"] == pytest.approx(result["ours_pack3_img_s"]
                                                   / result["ours_img_s"])
    assert "| ours_pack3 |" in proc.stdout and "pack of 3, student img/s" in proc.stdout
    refused = bench(*common, "bench.pack=0", cwd=tmp_path, env=cli_env)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "error: bench.pack=0 is not allowed: it is the number of jobs timed as one pack, >= 1 "
        "(1: the lone job only)")
