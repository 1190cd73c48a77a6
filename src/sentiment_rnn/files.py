"""Small file helpers: atomic writes, JSON, digests."""

import glob
import hashlib
import io
import json
import logging
import os
import re
import socket
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _owner_tag() -> str:
    """`<host>-<pid>`: which process on which machine a temporary file belongs to."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporaries of `path` left by killed processes of this machine; returns them.

    Only files named by `atomic_path` for this host whose process is gone: a concurrent writer's
    temporary, or one of another machine sharing the folder, is left alone.
    """
    host = _owner_tag().rsplit("-", 1)[0]
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(host)}-(\d+)\..+\.tmp$")
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.match(candidate.name)
        if match and not _is_running(int(match.group(1))):
            candidate.unlink(missing_ok=True)
            log.info("removed %s, left by a killed run", candidate)
            removed.append(candidate)
    return removed


def _read_umask() -> int:
    """The process umask; reading it means setting it, so do it once, before any thread."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _permissions_of_open(path: Path) -> None:
    """mkstemp creates 0600 files: give the result the permissions a plain open() would."""
    os.chmod(path, 0o666 & ~_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    The temporary is named `.<name>.<host>-<pid>.<random>.tmp`, so that the next write of the
    same path removes what a killed process left (`remove_stale_temporaries`).
    """
    path = Path(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp"
    )
    os.close(fd)
    try:
        yield Path(tmp)
        _permissions_of_open(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write `data` as indented JSON, creating the parent folder, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file written by `write_json`."""
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes: the identity of a tokenizer, a model, an input."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """An `.npz` that `np.load` reads, byte-identical for identical arrays.

    (`np.savez` stamps each member with the current time, so equal arrays would give files
    with other digests and DVC would see a changed output.)
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array))
            archive.writestr(member, buffer.getvalue())
