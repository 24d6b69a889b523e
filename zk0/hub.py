"""The one place that talks to the Hugging Face hub, so an unreachable hub is one clear line everywhere."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from zk0.errors import Zk0Error

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def fetch(repo_id: str, *, what: str, repo_type: str = "model") -> Path:
    """Download (or find in the local cache) a hub repository, or fail with one line saying why."""
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type))
    except LocalEntryNotFoundError as e:
        raise Zk0Error(
            f"{what} '{repo_id}' lives on the Hugging Face hub, which is not reachable from here and has no "
            f"local copy in the HF cache; use a local path instead or run where the hub is reachable"
        ) from e
    except HfHubHTTPError as e:
        raise Zk0Error(f"{what} '{repo_id}': the Hugging Face hub refused the download ({e})") from e
