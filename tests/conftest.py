"""Shared fixtures: one real MiniLM embedder per session, real store folders under tmp_path, child processes."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the embedder ships in a package; a test must never reach for the network
# The suite runs on 2 cores, often with child processes embedding beside the parent: one BLAS/OpenMP
# thread per process avoids oversubscription, which slows MiniLM down several times.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from engramma import Memory  # noqa: E402
from engramma.memory.embed import SentenceEmbedder  # noqa: E402


@pytest.fixture(scope="session")
def embedder() -> SentenceEmbedder:
    """The real default embedder, loaded once: pass it as `Memory.open(path, embedder=embedder)`."""
    model = SentenceEmbedder()
    model.embed(["load the weights now, not inside the first test"])
    return model


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def mem(store_path: Path, embedder: SentenceEmbedder):
    memory = Memory.open(store_path, embedder=embedder)
    yield memory
    memory.close()


@pytest.fixture
def keep_everything(tmp_path: Path) -> Path:
    """A policy file that indexes every item: for tests of durability and concurrency, where the default
    policy dropping templated near-duplicates would blur the counts under test."""
    path = tmp_path / "keep-everything.yaml"
    path.write_text("version: 1\nname: keep-everything\ndefault: index\n")
    return path


def child_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


CHILD_LIMIT_S = 300  # a child still running after this is killed: a deadlock fails the test, never hangs it


@pytest.fixture
def spawn(tmp_path: Path):
    """Start `python -c <source>` as a real child process; every child still running at teardown is killed."""
    children: list[subprocess.Popen] = []
    timers: list[threading.Timer] = []

    def start(source: str, *args: object) -> subprocess.Popen:
        # stderr goes to `child.stderr_path`: a pipe nobody drains could block the child.
        err_path = tmp_path / f"child-{len(children)}.stderr"
        with open(err_path, "w") as err:
            child = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(source), *map(str, args)],
                stdout=subprocess.PIPE, stderr=err, text=True, env=child_env(), cwd=tmp_path,
            )
        child.stderr_path = err_path
        children.append(child)
        timers.append(threading.Timer(CHILD_LIMIT_S, child.kill))
        timers[-1].daemon = True
        timers[-1].start()
        return child

    yield start
    for timer in timers:
        timer.cancel()
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A tiny pretrained Llama-shaped model (tests/tiny_lm.py) saved as a transformers folder, built once."""
    import tiny_lm

    return tiny_lm.build(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture
def tiny(tiny_model_path):
    """A fresh copy of the tiny model, loaded for this test (adapters never leak between tests)."""
    from engramma.updater import load_model

    return load_model(str(tiny_model_path), device="cpu")
