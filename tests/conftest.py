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


SHM = Path("/dev/shm")
SEGMENTS_BEFORE = pytest.StashKey[set]()


def pytest_configure(config):
    """Under mpiexec every rank runs pytest: give each its own temporary root, so they never clean up each other's.
    Note the MPICH segments already in /dev/shm (see pytest_unconfigure)."""
    import os
    import tempfile
    rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK")
    if rank is not None and not config.option.basetemp:
        config.option.basetemp = tempfile.mkdtemp(prefix=f"pytest-rank{rank}-")
    config.stash[SEGMENTS_BEFORE] = set(SHM.glob("mpich_*")) if SHM.is_dir() else set()


def pytest_unconfigure(config):
    """Ranks the tests kill leave MPICH's segments in /dev/shm (2 MB each); remove those this test run
    made once no process maps them, so repeated runs do not fill the machine's shared memory."""
    if not SHM.is_dir():
        return
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(line.split()[-1] for line in maps.read_text().splitlines() if "/dev/shm/mpich_" in line)
        except OSError:
            continue     # a process that ended, or one not ours to read
    for segment in set(SHM.glob("mpich_*")) - config.stash.get(SEGMENTS_BEFORE, set()):
        if str(segment) not in mapped:
            segment.unlink(missing_ok=True)
