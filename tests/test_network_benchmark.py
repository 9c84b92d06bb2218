"""benchmarks/network_scaling.py runs from a clone: a small pass over 2 netns hosts, unshaped and with
1 Gbit/s links, whose numbers must show the links at work (as root with network namespaces, i.e. CI;
skipped elsewhere with the reason, failed under CI)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_multihost import can_make_namespaces

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_the_network_benchmark_measures_shaped_links(tmp_path):
    reason = can_make_namespaces()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI runs as root and must build the cluster: {reason}")
    if reason:
        pytest.skip(reason)
    results = tmp_path / "network.json"
    run = subprocess.run([sys.executable, "benchmarks/network_scaling.py", "--rates", "off", "1gbit", "--nodes", "1", "2",
                          "--per-node", "1", "--reps", "2", "--rounds", "1", "--json", str(results),
                          "--plot", str(tmp_path / "network.png")], capture_output=True, text=True, cwd=ROOT, timeout=1100)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    measured = json.loads(results.read_text())["measured"]
    two_hosts = {(r["rate"], r["model"]): r for r in measured if r["hosts"] == 2}
    for (rate, model), r in two_hosts.items():
        # every host receives at least the gradient's bytes (2 (N - 1) / N = 1 of them at N = 2)
        assert r["link_bytes_per_host"]["flat"] >= r["bytes"], r
    small = two_hosts[("1gbit", "784-256-10")]
    assert small["seconds"]["flat"] >= small["bytes"] * 8 / 1e9 * 0.9, small      # no faster than the link
    model = json.loads(results.read_text())["model"]
    assert set(model) == {"off", "1gbit"} and (tmp_path / "network.png").stat().st_size > 10_000
    assert model["1gbit"]["beta_bytes_per_s"] < 1.25e8 * 1.1, model["1gbit"]       # fitted: at most ~1 Gbit/s
