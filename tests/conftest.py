"""Test-wide environment: no hub, caches in a temporary directory, a session-wide demo asset cache."""

import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="zk0-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


SMALL_DEMO = dict(seed=0, participants=2, episodes=3, frames_per_episode=20, eval_episodes=2)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """One generated demo (tiny VLM assets + datasets) shared by every test that only reads it."""
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="session")
def small_demo_root(tmp_path_factory) -> Path:
    """The small demo's own root: the federated tests regenerate `demo_root` with their own parameters."""
    return tmp_path_factory.mktemp("small-demo")


@pytest.fixture(scope="session")
def small_demo(small_demo_root: Path):
    """A small demo (2 participants, short episodes) for tests that read demo datasets.

    Imported here, not at the top, so test modules that never touch lerobot do not pay its import.
    """
    from zk0.demo import ensure_demo

    return ensure_demo(small_demo_root, **SMALL_DEMO)
