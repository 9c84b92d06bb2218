"""The benchmark scripts run end to end on tiny settings (no timing is asserted: machines are noisy),
and the checks that make their numbers comparable hold."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")


def bench(script, *args):
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *map(str, args)], capture_output=True,
                            text=True, cwd=ROOT, timeout=500)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def import_benchmark(name):
    for folder in (ROOT / "benchmarks", ROOT / "benchmarks" / "workers"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return __import__(name)


def test_throughput_and_its_plot(tmp_path):
    out = bench("throughput.py", "--worlds", "1", "2", "--batches", "64", "--runs", "1", "--seconds", "0.2",
                "--json", tmp_path / "t.json", "--plot", tmp_path / "t.png")
    rows = json.loads((tmp_path / "t.json").read_text())["results"]
    cores = os.cpu_count() or 1
    expected = {(1, 64, 1), (2, 64, 1)} | ({(1, 64, cores)} if cores > 1 else set())
    assert {(r["world"], r["batch"], r["threads"]) for r in rows} == expected
    assert all(len(r["rates"]) == 1 and r["rates"][0] > 0 for r in rows)
    assert "| W | BLAS threads/rank | global batch | samples/s |" in out and "B=64: W=2 / W=1" in out
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    bench("throughput.py", "--replot", "--json", tmp_path / "t.json", "--plot", tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_runs_the_numpy_systems(tmp_path):
    out = bench("compare_torch_ddp.py", "--systems", "ddp_edf", "handwritten", "--rounds", "1", "--runs", "2",
                "--seconds", "0.2", "--json", tmp_path / "c.json")
    result = json.loads((tmp_path / "c.json").read_text())
    assert len(result["runs"]) == 2 and out.count("| handwritten |") == 2 and "each run's median" in out
    for run in result["runs"]:
        assert set(run["ratios"]) == {"ddp_edf/handwritten@1", "ddp_edf/handwritten@2"}
        assert set(run["rates"]) == {"ddp_edf@1", "ddp_edf@2", "handwritten@1", "handwritten@2"}
        assert all(len(v) == 1 and v[0] > 0 for v in run["rates"].values()) and run["failures"] == []
    # before timing, both trained like the float64 reference at both world sizes
    check = result["check"]
    assert set(check["systems"]) == {"ddp_edf@1", "ddp_edf@2", "handwritten@1", "handwritten@2"}
    assert out.count(": same training") == 4 and "DIFFERENT" not in out


def test_the_training_check_passes_a_world_size_that_does_not_divide_the_batch():
    # 256 over 3 ranks: shards of 86, 85, 85; both loops scale by the GLOBAL batch
    out = bench("compare_torch_ddp.py", "--systems", "ddp_edf", "handwritten", "--worlds", "3", "--check-only")
    assert out.count(": same training") == 2 and "samples/s" not in out


def test_the_training_check_stops_the_comparison_when_a_system_trains_differently(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common
    from compare_torch_ddp import check_same_training
    images, labels = common.load_split("train")
    initial = common.initial_parameters()
    right = {"check": common.reference_training(initial, images, labels, 256)}
    # a learning rate 1% off, or the gradient summed over 2 ranks instead of averaged
    lr_off = {"check": common.reference_training(initial, images, labels, 256, lr=1.01 * common.LR)}
    summed = {"check": common.reference_training(initial, images, labels, 256, lr=2 * common.LR)}
    systems = {"good": lambda world, arguments: right, "lr_off": lambda world, arguments: lr_off,
               "summed": lambda world, arguments: summed}
    with pytest.raises(SystemExit, match=r"not the same training.*lr_off at W = 1 \(loss .*moved .*summed at W = 1"):
        check_same_training(systems, [1], 256, [])
    assert set(check_same_training({"good": systems["good"]}, [1, 2], 256, [])["systems"]) == {"good@1", "good@2"}
    # PyTorch DDP and ChainerMN at W = 3 (mean of shard means, measured: loss 0.890981 vs 0.890605): the hint
    with pytest.raises(SystemExit, match=r"at W = 3 the batch of 256 does not split evenly"):
        check_same_training({"torch_ddp": systems["lr_off"]}, [2, 3], 256, [])
    # no hint when every world size divides the batch, nor for a system that should take the global mean
    for name, worlds in (("torch_ddp", [1, 2]), ("ddp_edf", [2, 3])):
        with pytest.raises(SystemExit) as stop:
            check_same_training({name: systems["lr_off"]}, worlds, 256, [])
        assert "split evenly" not in str(stop.value)


def test_the_reference_gradient_against_finite_differences():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common
    import numpy as np
    rng = np.random.default_rng(3)
    images, labels = common.load_split("train")
    images, labels = images[:16], labels[:16]
    theta = {k: v.astype(np.float64) for k, v in common.initial_parameters(seed=5).items()}
    grads = common.reference_gradient(theta, images, labels)
    eps = 1e-6
    for name, value in theta.items():
        for _ in range(6):
            at = tuple(rng.integers(0, n) for n in value.shape)
            if name == "W1" and not images[:, at[0]].any():
                at = (int(np.flatnonzero(images.any(axis=0))[0]), at[1])   # a pixel that is not 0 everywhere
            plus, minus = ({**theta, name: value.copy()} for _ in range(2))
            plus[name][at] += eps
            minus[name][at] -= eps
            numeric = (common.mean_cross_entropy(plus, images, labels)
                       - common.mean_cross_entropy(minus, images, labels)) / (2 * eps)
            assert grads[name][at] == pytest.approx(numeric, rel=1e-5, abs=1e-9), (name, at)


def test_a_crashing_run_is_retried_once_then_left_without_a_figure(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare_torch_ddp import done, run_with_retry
    crash = RuntimeError("torchrun ... failed (1):\nterminate called without an active exception\nmore")
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise crash
        return {"samples_per_s": 5.0}
    failures = []
    assert run_with_retry(flaky, "round 1 W=2 torch_ddp", failures) == {"samples_per_s": 5.0}
    assert len(attempts) == 2 and [f["attempt"] for f in failures] == [1]
    assert "terminate called without an active exception); retrying once" in capsys.readouterr().out

    def broken():
        raise crash
    assert run_with_retry(broken, "round 2 W=2 torch_ddp", failures) is None
    assert [f["attempt"] for f in failures] == [1, 1, 2] and "no figure" in capsys.readouterr().out
    assert done([1.0, None, 3.0]) == [1.0, 3.0]


def test_roofline(tmp_path):
    out = bench("roofline.py", "--runs", "1", "--seconds", "0.2", "--json", tmp_path / "r.json")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["flops_per_sample"] == 2 * (2 * 784 * 256 + 3 * 256 * 10)
    probe = result["probe"]
    assert len(probe["rates"]) == 2 and probe["latency_s"] > 0 and probe["allreduce_s"] > 0
    assert result["one_core_samples_per_s"] > 0 and len(result["ddp_edf_samples_per_s"]) == 1
    assert "fraction of the all-ranks-at-once bound:" in out


def test_roofline_refuses_a_batch_smaller_than_the_world():
    result = subprocess.run([sys.executable, "benchmarks/roofline.py", "--world", "4", "--batch", "2"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "needs 1 <= --world <= --batch" in result.stderr


def test_step_throughput(tmp_path):
    out = bench("step_throughput.py", "--batches", "16", "32", "--runs", "1", "--seconds", "0.05",
                "--json", str(tmp_path / "s.json"))
    rows = {int(m[1]): float(m[2]) for m in re.finditer(r"^\s+(\d+) .* ([\d.]+)x$", out, re.M)}
    assert set(rows) == {16, 32} and all(ratio > 0 for ratio in rows.values())
    saved = json.loads((tmp_path / "s.json").read_text())["results"]
    assert [r["batch"] for r in saved] == [16, 32] and all(r["engine"][0] > 0 for r in saved)


def test_the_engine_and_the_lecture_transcription_take_the_same_steps():
    # step_throughput's ratio compares the same computation: same parameters, same update
    st = import_benchmark("step_throughput")
    initial = st.initial_parameters()
    engine, engine_params = st.engine_stepper(initial)
    lecture, lecture_params = st.lecture_stepper(initial)
    for x, y in st.make_data(32, n_batches=3):
        engine(x, y)
        lecture(x, y)
    a, b = engine_params(), lecture_params()
    assert set(a) == set(b) == set(st.NAMES)
    for name in st.NAMES:
        assert not np.allclose(a[name], initial[name], rtol=0, atol=1e-4), name   # it did move
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)


@needs_fashion
def test_time_to_accuracy_without_peers(tmp_path):
    out = bench("time_to_accuracy.py", "--config", "configs/smoke.toml", "--rounds", "1", "--worlds", "2",
                "--no-torch", "--json", tmp_path / "a.json")
    (curve,) = json.loads((tmp_path / "a.json").read_text())["curves"]["ddp_edf@2"]
    assert [p["epoch"] for p in curve] == [1, 2]   # smoke: 2 epochs, one point each
    assert 0 < curve[0]["seconds"] < curve[1]["seconds"]
    assert all(0.5 < p["accuracy"] <= 1 for p in curve)   # trained: chance is 0.1
    assert "| ddp_edf | 2 |" in out and "skipping torch_ddp: --no-torch" in out


@needs_fashion
def test_the_time_to_accuracy_worker_trains_epoch_by_epoch_as_one_fit_does():
    from ddp_edf.config import load_config
    from ddp_edf.parallel.comm import SerialComm
    from ddp_edf.train import build_trainer
    worker = import_benchmark("tta_ddp_edf")
    # a cosine schedule depends on the run's total steps; max_steps stops the second epoch early
    overrides = ["optim.schedule=cosine", "train.epochs=3", "train.max_steps=50", "log.every=1000000000"]
    whole = build_trainer(load_config("configs/smoke.toml", overrides), SerialComm())
    whole.fit(3, max_steps=50)
    by_epoch = build_trainer(load_config("configs/smoke.toml", overrides), SerialComm())
    epochs = []
    worker.fit_by_epoch(by_epoch, 3, 50, lambda epoch: epochs.append((epoch, by_epoch.step)))
    per_epoch = by_epoch.steps_per_epoch
    assert 25 < per_epoch < 50 and epochs == [(1, per_epoch), (2, 50)]
    np.testing.assert_array_equal(by_epoch.graph.params, whole.graph.params)


def test_deterministic_cost_and_accuracy(tmp_path):
    out = bench("deterministic.py", "--worlds", "1", "2", "--batches", "64", "--runs", "1", "--seconds", "0.2",
                "--chunk", "16", "--accuracy-steps", "3", "--json", tmp_path / "d.json")
    result = json.loads((tmp_path / "d.json").read_text())
    assert [(r["world"], r["batch"]) for r in result["cost"]] == [(1, 64), (2, 64)] and result["chunk"] == 16
    assert all(r["ratio"] > 0 for r in result["cost"]) and "step time, deterministic / default" in out
    accuracy = result["accuracy"]
    # the exact sum of the chunks is their float64 sum rounded once to float32: within float32's rounding
    assert accuracy["exact sum of the chunks"]["max"] <= 2.0 ** -24
    assert accuracy["deterministic"]["median"] < 1e-5 and accuracy["default"]["median"] < 1e-5


def test_cnn_throughput_gemm_bound_and_profile(tmp_path):
    out = bench("cnn_throughput.py", "--systems", "ddp_edf", "--worlds", "1", "2", "--rounds", "1", "--seconds", "0.2",
                "--batch", "16", "--json", tmp_path / "c.json")
    result = json.loads((tmp_path / "c.json").read_text())
    assert all(rate > 0 for key in ("ddp_edf@1", "ddp_edf@2") for rate in result["rates"][key])
    assert set(result["gemm_bound"]["2"]["ms_per_layer"]) == {"conv0", "conv1", "fc0", "fc1"}
    assert "Conv2d conv1 backward" in result["profile_ms"] and "GEMM bound at W = 2" in out


def test_accuracy_over_seeds(tmp_path):
    out = bench("accuracy.py", "--only", "digits_cnn", "--seeds", "1", "2", "--set", "train.epochs=2",
                "--json", tmp_path / "a.json")
    summary = json.loads((tmp_path / "a.json").read_text())["summary"]["digits_cnn"]
    assert len(summary["final"]) == 2 and all(0.3 < a <= 1 for a in summary["final"])   # trained: chance is 0.1
    assert "| digits_cnn |" in out


def test_the_time_to_accuracy_worker_stops_when_asked():
    from ddp_edf.config import load_config
    from ddp_edf.parallel.comm import SerialComm
    from ddp_edf.train import build_trainer
    worker = import_benchmark("tta_ddp_edf")
    trainer = build_trainer(load_config(None, ["train.epochs=3", "log.echo=false"]), SerialComm())
    worker.fit_by_epoch(trainer, 3, 0, lambda epoch: epoch == 2)
    assert trainer.step == 2 * trainer.steps_per_epoch
