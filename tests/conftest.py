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


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind():
    """Ranks the tests kill leave MPICH's segments in /dev/shm (2 MB each); remove those this test run
    made once no process maps them, so repeated runs do not fill the machine's shared memory."""
    shm = Path("/dev/shm")
    before = set(shm.glob("mpich_*")) if shm.is_dir() else set()
    yield
    if not shm.is_dir():
        return
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(line.split()[-1] for line in maps.read_text().splitlines() if "/dev/shm/mpich_" in line)
        except OSError:
            continue     # a process that ended, or one not ours to read
    for segment in set(shm.glob("mpich_*")) - before:
        if str(segment) not in mapped:
            segment.unlink(missing_ok=True)
