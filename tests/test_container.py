"""The Dockerfile's commands, run outside a container (no engine here): its pip install in a fresh venv,
then its CMD through /bin/sh as Docker runs it, with the data mounted the documented way (DDP_EDF_DATA)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    instructions = dict(ENV=[], RUN=[], CMD=[], COPY=[])
    for match in re.finditer(r"^(ENV|RUN|CMD|COPY) (.*(?:\\\n.*)*)$", text, re.M):
        instructions[match.group(1)].append(match.group(2).replace("\\\n", " "))
    return instructions


def test_dockerfile_is_what_the_readme_promises():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim$", text, re.M)
    assert re.search(r"^USER (?!root)\w+$", text, re.M), "runs as a non-root user"
    assert "DDP_EDF_DATA=/data" in text
    cmd, = dockerfile()["CMD"]
    assert cmd.startswith("exec mpirun -n ${NPROC:-2} python -m ddp_edf.train")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_install_and_default_command_work_in_a_fresh_venv(tmp_path):
    if not FASHION.is_dir():
        pytest.skip("needs Fashion-MNIST: apt-get install dataset-fashion-mnist")
    steps = dockerfile()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # COPY pyproject.toml README.md ddp_edf -> /src, configs -> /work/configs
    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ddp_edf", src / "ddp_edf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "configs", work / "configs")
    (work / "runs").mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "fashion-mnist").symlink_to(FASHION)   # docker run -v /usr/share/datasets:/data:ro

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI_LOCAL", "OMPI_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", VIRTUAL_ENV=str(venv), DDP_EDF_DATA=str(data),
               XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONNOUSERSITE="1")
    installs = [run for run in steps["RUN"] if run.startswith("pip install")]
    assert installs, "the Dockerfile installs ddp_edf with pip"
    for command in installs:
        result = subprocess.run(["sh", "-c", command.replace("/src", str(src))], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=500)
        assert result.returncode == 0, result.stderr[-3000:]
    assert (venv / "bin/mpirun").exists(), "the mpich wheel provides mpirun"

    env.update(NPROC="2", TRAIN_ARGS="--config configs/smoke.toml --out runs/smoke")
    result = subprocess.run(["sh", "-c", steps["CMD"][0]], env=env, cwd=work, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (work / "runs/smoke/metrics.jsonl").read_text().splitlines()]
    test = [r for r in records if r["split"] == "test"]
    assert len(test) == 1 and test[0]["error"] < 0.3
    log = (work / "runs/smoke/train.log").read_text()
    assert "ranks: 2 (mpi)" in log and str(data / "fashion-mnist") in log
