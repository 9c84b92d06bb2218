"""tests/cluster/netns_cluster.sh itself: a base it cannot use is refused in one line, and an `up` that fails
tears down what it started and exits non-zero (never "ready")."""

import os
import subprocess

import pytest

from test_multihost import CLUSTER, require_namespaces

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def env():
    require_namespaces()
    if subprocess.run(["ip", "link", "show", "ddpbr0"], capture_output=True).returncode == 0:
        pytest.skip("a cluster is up (ddpbr0)")
    return dict(os.environ)


def test_a_cluster_base_under_a_private_folder_is_refused_in_one_line(env, tmp_path):
    assert oct(tmp_path.parent.stat().st_mode & 0o777) == "0o700"      # what pytest (and mktemp -d) make
    result = subprocess.run(["bash", str(CLUSTER), "up", "2"], capture_output=True, text=True, timeout=60,
                            env={**env, "CLUSTER_BASE": str(tmp_path / "cluster")})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "which the munge and Slurm daemons cannot enter" in result.stderr
    assert not (tmp_path / "cluster").exists()


def test_an_up_that_fails_tears_down_and_exits_non_zero(env):
    base = "/tmp/ddp_edf_cluster_failing"
    result = subprocess.run(["bash", str(CLUSTER), "up", "2"], capture_output=True, text=True, timeout=500,
                            env={**env, "CLUSTER_BASE": base, "CLUSTER_RATE": "7xbit"})   # fails at its last stage
    assert result.returncode == 1 and "ready" not in result.stdout, result.stdout + result.stderr
    assert "rate 7xbit: use off, Ngbit or Nmbit" in result.stderr and "up failed: tearing down" in result.stderr
    assert subprocess.run(["ip", "link", "show", "ddpbr0"], capture_output=True).returncode != 0
    assert not os.path.exists(base) and "ddpn1" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                                        text=True).stdout
