import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """No real cache, no DDP_EDF_* variables, no system folders: the search sees only tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DDP_EDF_DATA", raising=False)
    monkeypatch.delenv("DDP_EDF_MIRROR", raising=False)
    monkeypatch.setattr("ddp_edf.data.datasets.SYSTEM_DIRS", (str(tmp_path / "system"),))
    return tmp_path


def pytest_configure(config):
    """Under mpiexec every rank runs pytest: give each its own temporary root, so they never clean up each other's."""
    import os
    import tempfile
    rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK")
    if rank is not None and not config.option.basetemp:
        config.option.basetemp = tempfile.mkdtemp(prefix=f"pytest-rank{rank}-")
