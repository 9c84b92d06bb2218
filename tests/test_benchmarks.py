"""The benchmark scripts run end to end on tiny settings (no timing is asserted: machines are noisy)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def bench(script, *args):
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=500)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_throughput_and_its_plot(tmp_path):
    out = bench("throughput.py", "--worlds", "1", "2", "--batches", "64", "--runs", "1", "--seconds", "0.2",
                "--json", str(tmp_path / "t.json"), "--plot", str(tmp_path / "t.png"))
    rows = json.loads((tmp_path / "t.json").read_text())["results"]
    assert {(r["world"], r["threads"]) for r in rows} >= {(1, 1), (2, 1)}
    assert all(r["rates"][0] > 0 and set(r["phases_ms"]) == {"data", "forward", "backward", "allreduce", "optimizer"}
               for r in rows)
    assert "| W | BLAS threads/rank |" in out and (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_runs_the_numpy_systems(tmp_path):
    out = bench("compare_torch_ddp.py", "--systems", "ddp_edf", "handwritten", "--rounds", "1", "--seconds", "0.2",
                "--json", str(tmp_path / "c.json"))
    result = json.loads((tmp_path / "c.json").read_text())
    assert set(result["ratios"]) == {"ddp_edf/handwritten@1", "ddp_edf/handwritten@2"} and "| handwritten |" in out
    # one round: a state probe before each multi-rank run
    probes = result["probes_allreduce_ms"]
    assert set(probes) == {"ddp_edf@2", "handwritten@2"} and all(len(v) == 1 and v[0] > 0 for v in probes.values())
    assert "both runs began in the normal state" in out and "ddp_edf / handwritten: " in out
    # the ring tuner's share of ddp_edf's timed steps, per round (one process has no ring)
    shares = result["ddp_edf_ring_rotating"]
    assert shares["ddp_edf@1"] == [0.0] and len(shares["ddp_edf@2"]) == 1 and 0 <= shares["ddp_edf@2"][0] <= 1
    assert "% of steps" in out
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


def test_roofline(tmp_path):
    out = bench("roofline.py", "--runs", "1", "--seconds", "0.2", "--json", str(tmp_path / "r.json"))
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["flops_per_sample"] == 2 * (2 * 784 * 256 + 3 * 256 * 10)
    assert result["probe"]["shared_s"] > 0 and "fraction of" in out


def test_step_budget(tmp_path):
    compare = tmp_path / "compare_run1.json"
    compare.write_text(json.dumps({"rates": {"chainermn@2": [100_000.0, 120_000.0, None, 110_000.0]},
                                   "probes_allreduce_ms": {"chainermn@2": [0.45, 0.12, 0.12, 0.13]}}))
    out = bench("step_budget.py", "--blocks", "2", "--steps", "5", "--repeats", "5", "--compare", str(compare),
                "--json", str(tmp_path / "b.json"))
    result = json.loads((tmp_path / "b.json").read_text())
    assert set(result["median_ms"]) == {"step", "skeleton", "gemms", "exchange", "rest", "rest_one_process"}
    assert all(len(result["job"][loop]) == 2 for loop in ("step", "skeleton", "gemms"))
    assert all(result["median_ms"][part] > 0 for part in ("step", "skeleton", "gemms", "rest_one_process"))
    # the derived parts are differences of the measured ones (no timing is asserted)
    m = result["median_ms"]
    assert m["exchange"] == pytest.approx(m["skeleton"] - m["gemms"]) and m["rest"] == pytest.approx(m["step"] - m["skeleton"])
    # 1.7 x ChainerMN's median (110k; a failed run has no figure) needs 256 / 187k s per step; its
    # normal-state rounds (probe < 1.5 x 0.12 ms): 120k and 110k
    assert result["target"]["all"]["needed_step_ms"] == pytest.approx(1e3 * 256 / (1.7 * 110_000))
    assert result["target"]["normal-state"]["needed_step_ms"] == pytest.approx(1e3 * 256 / (1.7 * 115_000))
    assert "| the step (Trainer.train_step) |" in out and "needs a step of" in out


def test_ab_trainer_runs_a_git_revision_against_the_working_tree(tmp_path):
    out = bench("ab_trainer.py", "--rev", "HEAD", "--blocks", "2", "--steps", "5", "--set", "dist.ring_mb=0",
                "--json", str(tmp_path / "ab.json"))
    result = json.loads((tmp_path / "ab.json").read_text())
    assert len(result["job"]["old"]) == len(result["job"]["new"]) == len(result["job"]["probes"]) == 2
    ratios = [o / n for o, n in zip(result["job"]["old"], result["job"]["new"])]
    assert result["summary"]["ratio_all"] == pytest.approx(sum(ratios) / 2)   # the median of two
    assert "old = ddp_edf at HEAD" in out and "old / new per block" in out


def test_ab_trainer_summary_splits_blocks_by_the_probed_state():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ab_trainer import summary
    job = {"probes": [0.12e-3, 0.45e-3, 0.13e-3, 0.44e-3, 0.12e-3],
           "old": [1.30, 1.60, 1.32, 1.70, 1.28], "new": [1.25, 1.70, 1.20, 1.60, 1.28]}
    result = summary(job)
    assert result["blocks_normal"] == 3 and result["blocks_slow"] == 2
    assert result["ratio_normal"] == pytest.approx(1.30 / 1.25)          # median of 1.04, 1.10, 1.00
    assert result["ratio_slow"] == pytest.approx((1.60 / 1.70 + 1.70 / 1.60) / 2)
    assert result["new_faster_blocks"] == 3 and result["old_ms"] == pytest.approx(1320.0)


def test_overlap_probe_checks_both_reductions_sum_the_same_gradient(tmp_path):
    out = bench("overlap_probe.py", "--rounds", "1", "--blocks", "2", "--steps", "3", "--world", "3",
                "--json", str(tmp_path / "o.json"))
    result = json.loads((tmp_path / "o.json").read_text())
    assert set(result["summary"]) == {"test", "thread"} and result["world"] == 3   # 3 ranks: 256 rows do not split evenly
    for mode, (run,) in result["jobs"].items():
        assert run["same_gradient"] is True and len(run["probes"]) == 2
        assert all(len(run["times"][loop]) == 2 and min(run["times"][loop]) > 0 for loop in ("blocking", "overlap", "none"))
    assert "| test |" in out and "| thread |" in out


@pytest.mark.parametrize("bad, message", [(("--world", "1"), "--world must be >= 2"),
                                          (("--batch", "1"), "--batch must be >= --world"),
                                          (("--chunks", "785"), "--chunks must be in 1..784")])
def test_overlap_probe_refuses_settings_it_cannot_run(bad, message):
    result = subprocess.run([sys.executable, "benchmarks/overlap_probe.py", *bad], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 2 and message in result.stderr


def test_overlap_probe_summary_pools_every_block_of_every_job():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from overlap_probe import summary
    jobs = {"test": [{"times": {"blocking": [1e-3, 3e-3], "overlap": [2e-3, 2e-3], "none": [1e-3, 1e-3]}},
                     {"times": {"blocking": [2e-3, 2e-3], "overlap": [4e-3, 3e-3], "none": [1e-3, 1e-3]}}],
            "thread": []}
    result = summary(jobs)
    assert set(result) == {"test"}                                   # a mode with no job has no row
    assert result["test"]["median_ms"]["blocking"] == pytest.approx(2.0)   # median of 1, 3, 2, 2
    assert result["test"]["median_ms"]["overlap"] == pytest.approx(2.5)    # median of 2, 2, 4, 3
    assert result["test"]["overlap_vs_blocking"] == pytest.approx(1.25)


def test_blas_kernels(tmp_path):
    out = bench("blas_kernels.py", "--rows", "32", "--rounds", "2", "--repeats", "5", "--kernels", "Haswell",
                "NoSuchCore", "--json", str(tmp_path / "k.json"))
    result = json.loads((tmp_path / "k.json").read_text())
    assert len(result["seconds"]["native@32"]) == 2 and result["speed_vs_native"]["native@32"] == [1.0, 1.0]
    assert "| native |" in out and "ddp_edf's choice on this machine" in out


def test_time_to_accuracy_without_peers(tmp_path):
    out = bench("time_to_accuracy.py", "--config", "configs/smoke.toml", "--rounds", "1", "--worlds", "2",
                "--no-torch", "--json", str(tmp_path / "a.json"))
    curves = json.loads((tmp_path / "a.json").read_text())["curves"]
    assert len(curves["ddp_edf@2"][0]) == 2   # smoke: 2 epochs, one point each
    assert "| ddp_edf | 2 |" in out


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
