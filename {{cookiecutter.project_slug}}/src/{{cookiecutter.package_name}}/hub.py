"""Hub ids and the Hugging Face cache: one file of a hub repo, fetched or read offline.

A name is a local path when it can only be one (./x, /x, x.json, a/b/c) or when it exists;
anything else of the form org/name is a hub id, resolved by huggingface_hub into its cache
(under HF_HOME; on Modal a Volume), which honours a revision pin and HF_HUB_OFFLINE=1.
"""

import os
import re
import socket
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_path(name: str) -> bool:
    """A name that can only be a path (./x, /x, ~/x, x.json, a/b/c), never a hub id."""
    return name.endswith(".json") or not HUB_ID.fullmatch(name)


@cache
def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached ("huggingface.co:443: [Errno -2] ..."), or None if it
    answers a TCP connection within `timeout` seconds. Asked once per process: without it,
    huggingface_hub retries an unreachable hub five times over some 25 seconds. Behind a proxy
    the hub is not asked directly: the download finds out."""
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in PROXIES):
        return None
    url = urlsplit(constants.ENDPOINT)
    where = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
    try:
        socket.create_connection(where, timeout=timeout).close()
    except OSError as err:
        return f"{where[0]}:{where[1]}: {err}"
    return None


def hub_file(
    repo_id: str,
    filename: str,
    revision: str | None = None,
    what: str = "checkpoint",
    required: bool = True,
) -> Path | None:
    """One file of a hub repo, from huggingface_hub's cache or downloaded into it.

    Returns None for a file the repo does not have (or, offline, that is not cached) unless
    `required`; every other failure is one line that says what to do.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"{what} {repo_id}@{revision}" if revision else f"{what} {repo_id}"
    nowhere = f"(and there is no local folder {repo_id!r})"
    offline = constants.is_offline_mode()
    unreachable = None if offline else hub_unreachable()
    try:  # an unreachable hub is read as offline: the cache answers at once
        local = offline or unreachable is not None
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=local))
    except LocalEntryNotFoundError:  # offline, or the hub is unreachable, and not in the cache
        if not required:
            return None
        if unreachable is not None:
            message = (
                f"{at}: {filename} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                f"{nowhere}, and the hub cannot be reached ({unreachable}); run once online, "
                "or give a local folder"
            )
        elif offline:
            message = (
                f"{at}: {filename} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                f"{nowhere}, and HF_HUB_OFFLINE=1 forbids downloading it; run once online, or "
                "give a local folder"
            )
        else:
            message = f"{at}: {filename} could not be downloaded and is not cached {nowhere}"
    except EntryNotFoundError:
        if not required:
            return None
        message = f"{at} has no {filename}"
    except RepositoryNotFoundError:
        message = f"{at} is no hub repo you can read {nowhere}; check the name"
    except RevisionNotFoundError:
        message = f"{at}: the repo has no revision {revision!r}; give a branch, tag or commit"
    except HFValidationError:
        message = f"{what} {repo_id!r} is neither an existing path nor a hub id (org/name)"
    raise FileNotFoundError(message)
