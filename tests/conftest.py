"""Test-wide environment (no hub, caches in a temporary directory), the session-wide demo roots, and the one
small-run config every end-to-end test starts from (`small_config`, `small_overrides`, `set_args`).

Test modules import the plain functions (`from conftest import small_config`); pytest puts tests/ on the path.
"""

import os
import tempfile
from pathlib import Path

import pytest

from zk0.config import Config, load_config

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="zk0-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


DEMO_TOML = Path(__file__).parent.parent / "configs" / "demo.toml"

# A run of configs/demo.toml small enough for CPU tests: 3-episode demo datasets of 30 frames, two steps of
# batch 4 per round, one evaluation batch, one round, a 3 s lease. A test adds what its point needs.
SMALL_RUN = (
    "demo.episodes=3",
    "demo.frames_per_episode=30",
    'train.device="cpu"',
    "train.batch_size=4",
    "train.local_steps=2",
    "eval.batches=1",
    "federation.rounds=1",
    "federation.lease_s=3",
    "federation.round_timeout_s=60",
    "federation.join_timeout_s=120",
)


def small_overrides(demo_root: Path, *extra: str) -> list[str]:
    """The small run's overrides of configs/demo.toml with its demo under `demo_root`, then `extra` (a
    later override of the same key wins)."""
    return [f'demo.root="{demo_root}"', *SMALL_RUN, *extra]


def small_config(demo_root: Path, *extra: str) -> Config:
    """configs/demo.toml with `small_overrides(demo_root, *extra)`."""
    return load_config(DEMO_TOML, small_overrides(demo_root, *extra))


def set_args(overrides: list[str]) -> list[str]:
    """Overrides as a command line's `--set KEY=VALUE` arguments."""
    return [arg for o in overrides for arg in ("--set", o)]


SMALL_DEMO = dict(seed=0, participants=2, episodes=3, frames_per_episode=20, eval_episodes=2)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The run demo: tiny VLM assets, and the datasets a run of `small_config(demo_root)` generates on first
    use (configs/demo.toml's three participants, SMALL_RUN's episodes)."""
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="session")
def small_demo_root(tmp_path_factory) -> Path:
    """The small demo's own root. It holds other data than `demo_root` (two participants whose colours the
    eval set's union covers, 20-frame episodes, two eval episodes: what test_demo and test_data assert on),
    and a demo root holds one parameter set at a time: sharing one root, the runs would regenerate it."""
    return tmp_path_factory.mktemp("small-demo")


@pytest.fixture(scope="session")
def small_demo(small_demo_root: Path):
    """A small demo (2 participants, short episodes) for tests that read demo datasets.

    Imported here, not at the top, so test modules that never touch lerobot do not pay its import.
    """
    from zk0.demo import ensure_demo

    return ensure_demo(small_demo_root, **SMALL_DEMO)
