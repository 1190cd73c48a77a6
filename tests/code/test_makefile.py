"""The Makefile's Prefect server for `make pipeline`: started once, then found again."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from sentiment_rnn.testing import free_port, prefect_free_env

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFECT = REPO_ROOT / ".venv" / "bin" / "prefect"


def make(target: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-C", str(REPO_ROOT), target, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None or not PREFECT.exists(), reason="needs make")
def test_prefect_server_target_starts_one_server_and_reuses_it(tmp_path: Path) -> None:
    port = free_port()
    env = prefect_free_env(os.environ, tmp_path / "prefect-home")
    (tmp_path / "prefect-home").mkdir()
    try:
        first = make("prefect-server", env, f"PREFECT_PORT={port}")
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"Prefect UI: http://127.0.0.1:{port}" in first.stdout
        assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=10).json() is True
        pid = (tmp_path / "prefect-home" / "server.pid").read_text()

        start = time.perf_counter()
        again = make("prefect-server", env, f"PREFECT_PORT={port}")
        assert again.returncode == 0, again.stdout + again.stderr
        assert (tmp_path / "prefect-home" / "server.pid").read_text() == pid  # the same server
        assert time.perf_counter() - start < 60

        elsewhere = make(
            "prefect-server", env | {"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}
        )
        assert elsewhere.returncode != 0
        assert "error: no Prefect server answers at PREFECT_API_URL" in elsewhere.stderr
    finally:
        subprocess.run([str(PREFECT), "server", "stop"], env=env, capture_output=True)
