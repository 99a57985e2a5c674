"""Crash-safe file writes: a reader sees the old file or the new one, never half of either."""
from __future__ import annotations

import os
import uuid
from pathlib import Path


def atomic_write_bytes(path: Path, *chunks) -> None:
    """Write the chunks (bytes or any buffer, such as a numpy array) one after another, all or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
