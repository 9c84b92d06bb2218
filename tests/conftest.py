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
