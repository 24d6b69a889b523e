"""The one place that talks to the Hugging Face hub, so an unreachable hub is one clear line everywhere."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import requests
from huggingface_hub import HfApi, constants, get_session, get_token, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from zk0.errors import Zk0Error

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PROBE_TIMEOUT_S = 10.0
# The owners of the repo ids zk0 gives datasets that are not on the hub: a local directory is local/<name>,
# a generated demo dataset zk0-demo/<name> (zk0.demo.REPO_PREFIX).
LOCAL_OWNER = "local"
DEMO_OWNER = "zk0-demo"
# What the hub client raises when the hub is unreachable, refuses, or lacks a repository, whether zk0 called
# it or lerobot did on zk0's behalf (loading a hub dataset's metadata or frames).
HUB_ERRORS = (
    HfHubHTTPError,
    OfflineModeIsEnabled,
    LocalEntryNotFoundError,
    httpx.TransportError,
    requests.ConnectionError,
)


def looks_like_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def is_hub_dataset_id(repo_id: str) -> bool:
    """Whether a dataset description's repo_id names a hub dataset (publishable), not a local or demo one."""
    return bool(HUB_ID.match(repo_id)) and repo_id.split("/", 1)[0] not in (LOCAL_OWNER, DEMO_OWNER)


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


def fetch_dataset_files(repo_id: str, *, revision: str | None, cache_dir: Path, allow_patterns: str) -> Path:
    """Download (or find in `cache_dir`) the files of hub dataset `repo_id` that match `allow_patterns`, and
    return the snapshot's root. Raises one of HUB_ERRORS, for `dataset_failure` to put in one line."""
    return Path(
        snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=allow_patterns,
        )
    )


def dataset_failure(spec: str, error: BaseException) -> Zk0Error:
    """One line for one of HUB_ERRORS met getting hub dataset `spec`: absent, refused or unreachable."""
    if isinstance(error, RepositoryNotFoundError):
        return Zk0Error(f"dataset '{spec}' was not found on the Hugging Face hub (or it is private or gated)")
    if isinstance(error, HfHubHTTPError):
        return Zk0Error(f"dataset '{spec}': the Hugging Face hub refused the download ({first_line(error)})")
    reason = "HF_HUB_OFFLINE is set" if isinstance(error, OfflineModeIsEnabled) else first_line(error)
    return Zk0Error(
        f"dataset '{spec}' is on the Hugging Face hub, which is unreachable from here ({reason}); "
        "use a local path or run where the hub is reachable"
    )


def first_line(error: BaseException) -> str:
    """A hub client error's first line (the rest is request details), or its type when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _offline_by_env() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, or as huggingface_hub read it at import."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"} or constants.is_offline_mode()


def _unreachable(repo_id: str, why: str) -> Zk0Error:
    return Zk0Error(
        f"--push-to-hub '{repo_id}': the Hugging Face hub is not reachable from here ({why}); "
        f"--push-to-hub needs the hub reachable and a login (`hf auth login` or HF_TOKEN)"
    )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def check_can_push(repo_id: str) -> None:
    """Fail with one line, before any training, unless `repo_id` is an owner/name id and the hub is reachable
    with a login that it accepts."""
    if not HUB_ID.match(repo_id):
        raise Zk0Error(f"--push-to-hub '{repo_id}': not a Hugging Face hub repository id 'owner/name'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise Zk0Error(f"--push-to-hub '{repo_id}': not a valid hub repository id ({_one_line(e)})") from e
    if _offline_by_env():
        raise _unreachable(repo_id, "HF_HUB_OFFLINE is set; unset it")
    api = HfApi()
    try:
        token = get_token()
        if token is None:
            # Reachability first: on an offline machine "not reachable" is the news, not "log in".
            get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S, follow_redirects=True)
            raise Zk0Error(
                f"--push-to-hub '{repo_id}': not logged in to the Hugging Face hub; "
                f"run `hf auth login` or set HF_TOKEN to a token with write access"
            )
        user = api.whoami(token=token)
    except OfflineModeIsEnabled as e:
        raise _unreachable(repo_id, "offline mode is enabled") from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise Zk0Error(
                f"--push-to-hub '{repo_id}': the Hugging Face hub rejected the token (invalid or expired); "
                f"run `hf auth login` or set HF_TOKEN to a token with write access"
            ) from e
        raise Zk0Error(
            f"--push-to-hub '{repo_id}': the Hugging Face hub refused whoami ({_one_line(e)})"
        ) from e
    except httpx.TransportError as e:
        raise _unreachable(repo_id, _one_line(e)) from e
    role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise Zk0Error(
            f"--push-to-hub '{repo_id}': the Hugging Face token is read-only; "
            f"log in with a token that has write access (`hf auth login` or HF_TOKEN)"
        )
    owner = repo_id.split("/")[0]
    allowed = {user.get("name")} | {org.get("name") for org in user.get("orgs", []) if isinstance(org, dict)}
    if owner not in allowed:
        raise Zk0Error(
            f"--push-to-hub '{repo_id}': logged in as '{user.get('name')}', which is neither '{owner}' "
            f"nor one of its organizations ({', '.join(sorted(n for n in allowed if n)) or 'none'})"
        )


def push_folder(folder: Path, repo_id: str, *, private: bool = True) -> str:
    """Create `repo_id` (a model repository, kept as it is if it exists: private unless `private` is False,
    since a run's card describes its participants), upload `folder` into it, return its URL."""
    folder = Path(folder)
    if not folder.is_dir():
        raise Zk0Error(f"--push-to-hub '{repo_id}': nothing to upload, {folder} is not a directory")
    if _offline_by_env():
        raise _unreachable(repo_id, "HF_HUB_OFFLINE is set; unset it")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="zk0: federated run"
        )
    except OfflineModeIsEnabled as e:
        raise _unreachable(repo_id, "offline mode is enabled") from e
    except LocalTokenNotFoundError as e:
        raise Zk0Error(
            f"--push-to-hub '{repo_id}': not logged in to the Hugging Face hub; "
            f"run `hf auth login` or set HF_TOKEN to a token with write access"
        ) from e
    except (HfHubHTTPError, HFValidationError) as e:
        raise Zk0Error(
            f"--push-to-hub '{repo_id}': the Hugging Face hub refused the upload ({_one_line(e)})"
        ) from e
    except httpx.TransportError as e:
        raise _unreachable(repo_id, _one_line(e)) from e
    return str(url)
