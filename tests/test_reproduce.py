"""scripts/reproduce_*.sh: each names presets that exist, and one runs end to end (its sweep,
then kdrun-report) on tiny data."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import TINY

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "scripts").glob("reproduce_*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_each_script_runs_presets_that_exist(script):
    text = script.read_text()
    presets = re.findall(r"experiment=(\w+)", text)  # `experiment=$preset` is not one
    for loop in re.findall(r"for preset in ([\w ]+); do", text):
        presets += loop.split()
    assert presets
    for preset in presets:
        assert (REPO / "conf" / "experiment" / f"{preset}.yaml").is_file(), preset
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.mark.slow
def test_the_ddgsd_script_sweeps_then_writes_the_table(tmp_path, cli_env):
    tiny = [o for o in TINY if not o.startswith(("dataset=", "student="))]
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "reproduce_ddgsd.sh"), "dataset=synthetic",
         "student=resnet8", *tiny], cwd=tmp_path, env={**cli_env, "OUT": str(tmp_path / "out")},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "out" / "table.md").read_text().splitlines()
    assert table[0] == "| method | test/acc | test/best_acc (test-selected) | n | paper | Δ |"
    assert [row.split(" | ")[0] for row in table[2:4]] == ["| vanilla", "| ddgsd"]
    assert all(row.split(" | ")[3] == "3" for row in table[2:4])  # three seeds each
