"""Hugging Face model ids (``Qwen/Qwen3-8B``, ``ORG/NAME@REVISION``) resolved in the local cache, offline.

No network and no ``huggingface_hub`` import: the cache is read as ``huggingface_hub`` lays it out
(``file_download.py``, ``constants.py``)::

    <cache>/models--ORG--NAME/refs/main                     # a commit hash, one line
    <cache>/models--ORG--NAME/snapshots/<hash>/config.json  # a symlink into ../../blobs/

The cache root follows ``huggingface_hub.constants``: ``HF_HUB_CACHE``, else the legacy
``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME/hub``, else ``XDG_CACHE_HOME/huggingface/hub``, else
``~/.cache/huggingface/hub`` (``~`` and ``$VARS`` expanded).
"""

from __future__ import annotations

import os
import re

from .errors import SpecError

# ORG/NAME with an optional @REVISION (a branch or tag under refs/, or a commit hash under snapshots/).
# Repo names may hold dots (Qwen2.5-7B); a name ending in .json is a config path, never an id.
_REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w.-]+(?:/[\w.-]+)*))?")

DEFAULT_REVISION = "main"

RESOLUTION = ("ids are read offline from the Hugging Face cache: ORG/NAME[@REVISION] -> "
              "<cache>/models--ORG--NAME/snapshots/<hash in refs/REVISION, or REVISION itself>/config.json, "
              "<cache> = HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, "
              "else ~/.cache/huggingface/hub; fetch one with `huggingface-cli download ORG/NAME`")


def _expand(path: str) -> str:
    return os.path.expandvars(os.path.expanduser(path))


def cache_dir(environ=None) -> str:
    """The hub cache root, with the precedence of ``huggingface_hub.constants`` (see the module doc)."""
    env = os.environ if environ is None else environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return _expand(env[var])
    if env.get("HF_HOME"):
        home = env["HF_HOME"]
    else:
        home = os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return os.path.join(_expand(home), "hub")


def parse_repo_id(name: str) -> tuple[str, str] | None:
    """``(repo, revision)`` if ``name`` reads as ``ORG/NAME[@REVISION]``, else None."""
    m = _REPO_ID.fullmatch(name)
    if m is None or name.endswith(".json") or ".." in name or "--" in m["repo"]:
        return None
    return m["repo"], m["revision"] or DEFAULT_REVISION


def looks_like_repo_id(name: str) -> bool:
    return parse_repo_id(name) is not None


def repo_folder(repo: str, cache: str | None = None) -> str:
    """``<cache>/models--ORG--NAME``: the folder ``huggingface_hub`` keeps a model repo in."""
    return os.path.join(cache_dir() if cache is None else cache, "models--" + repo.replace("/", "--"))


def snapshot_folder(model_id: str) -> str:
    """The snapshot folder of ``ORG/NAME[@REVISION]`` in the local cache (``refs/REVISION`` names
    the commit; a REVISION with no ref is taken as a commit hash under ``snapshots/``); a
    :class:`SpecError` listing the paths looked in when it is not there."""
    parsed = parse_repo_id(model_id)
    if parsed is None:
        raise SpecError(f"{model_id!r} is not a Hugging Face model id; expected ORG/NAME or ORG/NAME@REVISION")
    repo, revision = parsed
    folder = repo_folder(repo)
    ref = os.path.join(folder, "refs", revision)
    looked = [ref]
    commit = revision
    if os.path.isfile(ref):
        with open(ref, encoding="utf-8") as f:
            commit = f.read().strip()
    snapshot = os.path.join(folder, "snapshots", commit)
    looked.append(os.path.join(snapshot, "config.json"))
    if os.path.isfile(os.path.join(snapshot, "config.json")):
        return snapshot
    raise SpecError(f"model {model_id!r} is not a built-in name, not a file or folder, and not in the "
                    f"local Hugging Face cache (looked in {', '.join(looked)}); {RESOLUTION}")


def find_config(model_id: str) -> str:
    """Path of ``config.json`` for ``ORG/NAME[@REVISION]`` in the local cache (see :func:`snapshot_folder`)."""
    return os.path.join(snapshot_folder(model_id), "config.json")
