"""zk0.hub's dataset calls: a hub dataset's files are fetched there, and every hub client error met getting
one becomes one line naming the dataset (the tests run with HF_HUB_OFFLINE=1, see conftest.py)."""

from pathlib import Path

import httpx
import pytest
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from zk0 import hub


def _response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/datasets/a/b"))


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            RepositoryNotFoundError("404 Client Error\nRequest id: x", response=_response(404)),
            "dataset 'a/b' was not found on the Hugging Face hub (or it is private or gated)",
        ),
        (
            HfHubHTTPError("500 Server Error\nRequest id: x", response=_response(500)),
            "dataset 'a/b': the Hugging Face hub refused the download (500 Server Error)",
        ),
        (
            httpx.ConnectError("name or service not known\nmore"),
            "dataset 'a/b' is on the Hugging Face hub, which is unreachable from here "
            "(name or service not known); use a local path or run where the hub is reachable",
        ),
    ],
)
def test_dataset_failure_is_one_line_naming_the_dataset(error, line):
    assert isinstance(error, hub.HUB_ERRORS)
    assert str(hub.dataset_failure("a/b", error)) == line


def test_fetching_a_dataset_offline_raises_a_hub_error_that_reads_as_unreachable(tmp_path: Path):
    with pytest.raises(hub.HUB_ERRORS) as caught:
        hub.fetch_dataset_files(
            "zk0-tests/no-such-dataset", revision=None, cache_dir=tmp_path, allow_patterns="data/*"
        )
    message = str(hub.dataset_failure("zk0-tests/no-such-dataset", caught.value))
    assert message.startswith(
        "dataset 'zk0-tests/no-such-dataset' is on the Hugging Face hub, which is unreachable"
    )
    assert "\n" not in message
