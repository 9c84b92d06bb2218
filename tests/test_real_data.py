"""Real Fashion-MNIST (Debian's dataset-fashion-mnist, installed by .ci/run): accuracy in one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")

if not FASHION.is_dir():
    if os.environ.get("CI"):
        raise RuntimeError(f"{FASHION} is missing: .ci/run should have installed dataset-fashion-mnist")
    pytest.skip(f"real data not installed ({FASHION}): apt-get install dataset-fashion-mnist",
                allow_module_level=True)


def final_test_record(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "test"][-1]


@pytest.mark.slow
def test_fashion_mlp_reaches_85_percent_in_two_epochs(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "ddp_edf.train", "--dist", "serial", "--config",
                             "configs/fashion_mlp.toml", "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    test = final_test_record(out)
    assert test["epoch"] == 1 and test["step"] == 2 * 391
    assert 1 - test["error"] >= 0.85, test
