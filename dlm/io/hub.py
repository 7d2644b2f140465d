"""Models from the Hugging Face hub: a hub id resolves to a complete snapshot in the local cache, downloaded with
huggingface_hub when it is not there yet.

    folder = hub_snapshot("GSAI-ML/LLaDA-8B-Instruct")              # or "org/name@revision"
    model, tokenizer = dlm.load("GSAI-ML/LLaDA-8B-Instruct")       # the same, then load_hf

Only the files a model needs are fetched (`MODEL_FILES`: config, safetensors weights and their index, the
tokenizer files, the generation config), through huggingface_hub's own client (its cache layout, progress bars,
resumable downloads, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_CACHE`/`HF_HOME`).  `HF_HUB_OFFLINE=1` and
`local_files_only=True` read the cache only.  A snapshot counts as a model only when every weight file its index
lists is there: huggingface_hub writes each file to `blobs/*.incomplete` and links it into the snapshot only once
complete, so an interrupted download is never read as a model; the next call resumes it.

The environment is read at call time (not at import, as huggingface_hub's own constants are), so a process that
changes `HF_ENDPOINT` or `HF_HUB_OFFLINE` gets what it set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

from dlm.io.tokenizer import TOKENIZER_FILES

# `org/name` or `org/name@revision`: what dlm reads as a hub id (anything else is a path).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", INDEX_FILE, *TOKENIZER_FILES)


class HubError(FileNotFoundError):
  """A hub id that could not be resolved to a complete model (one line that says why and what to do)."""


def hub_cache_dir() -> Path:
  """The Hugging Face hub cache, following huggingface_hub's environment variables (read now)."""
  for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    if os.environ.get(var):
      return Path(os.environ[var]).expanduser()
  if os.environ.get("HF_HOME"):
    return Path(os.environ["HF_HOME"]).expanduser() / "hub"
  xdg = os.environ.get("XDG_CACHE_HOME")
  return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _truthy(name: str) -> bool:
  return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
  """huggingface_hub's offline switch, read now."""
  return _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE")


def missing_weights(folder: Path) -> list[str]:
  """The weight files a model folder still lacks (all of them when it has no config.json or no weights)."""
  if not (folder / "config.json").is_file():
    return ["config.json"]
  index = folder / INDEX_FILE
  if index.is_file():
    try:
      shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError):
      return [INDEX_FILE]
    return [s for s in shards if not (folder / s).is_file()]
  return [] if (folder / SINGLE_FILE).is_file() else [SINGLE_FILE]


def hub_snapshot(hub_id: str, *, revision: str | None = None, token: str | bool | None = None,
                 local_files_only: bool = False, cache_dir: str | os.PathLike | None = None) -> Path:
  """`org/name[@revision]` -> the folder of a complete snapshot in the hub cache, downloading what is missing.

  revision: a branch, tag or commit (also written `org/name@revision`; the keyword wins).  token: a hub token
  (default: HF_TOKEN or the stored login).  local_files_only (or HF_HUB_OFFLINE=1): never touch the network.
  Raises HubError in one line: unknown repository or revision, a missing weight file, no network, an interrupted
  download (whose partial files stay in the cache's blobs/ to be resumed, never linked as a model)."""
  import huggingface_hub

  repo, _, at = hub_id.partition("@")
  revision = revision or at or None
  local = local_files_only or offline()
  endpoint = os.environ.get("HF_ENDPOINT") or None
  with hub_errors(repo, hub_id, revision, local_files_only):
    folder = Path(huggingface_hub.snapshot_download(
        repo, revision=revision, allow_patterns=list(MODEL_FILES), token=token, local_files_only=local,
        cache_dir=cache_dir or hub_cache_dir(), endpoint=endpoint))
  missing = missing_weights(folder)
  if missing:
    raise HubError(f"{repo!r}: the snapshot at {folder} lacks {', '.join(missing[:3])}"
                   f"{' ...' if len(missing) > 3 else ''} (not on the hub at that revision, or not downloaded: "
                   "rerun with network to complete it)")
  return folder


@contextlib.contextmanager
def hub_errors(repo: str, hub_id: str, revision: str | None, local_files_only: bool, *, kind: str = "model"):
  """huggingface_hub's exceptions -> HubError in one line that says why and what to do (models and datasets)."""
  from huggingface_hub import errors
  endpoint = os.environ.get("HF_ENDPOINT") or None
  where = f" at {endpoint}" if endpoint else ""
  try:
    yield
  except errors.GatedRepoError:  # before its base class, RepositoryNotFoundError
    raise HubError(f"{repo!r} is gated: accept its terms on the hub and set HF_TOKEN") from None
  except errors.RepositoryNotFoundError:
    raise HubError(f"{repo!r}: no such {kind} on the hub{where} (or it is private or gated: set HF_TOKEN to a token "
                   "that can read it)") from None
  except errors.RevisionNotFoundError:
    raise HubError(f"{repo!r} has no revision {revision!r} on the hub{where}") from None
  except errors.LocalEntryNotFoundError:  # before its base class, EntryNotFoundError
    why = "HF_HUB_OFFLINE is set" if offline() else ("local_files_only=True" if local_files_only else
                                                      "the hub could not be reached")
    how = f"dlm.load({hub_id!r}) or `hf download {repo}`" if kind == "model" else \
        f"`hf download --repo-type dataset {repo}`"
    raise HubError(f"{repo!r} is not in the Hugging Face cache and {why}; download it once with network "
                   f"({how})") from None
  except errors.EntryNotFoundError as e:
    raise HubError(f"{repo!r}: a file the {kind} needs is missing on the hub{where}: {_first_line(e)}") from None
  except Exception as e:
    # Any other HTTP error, an I/O error, or a dropped connection (httpx's transport errors are not OSErrors).
    transport = type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "h11")
    if not (transport or isinstance(e, (OSError, errors.HfHubHTTPError))):
      raise
    raise HubError(f"{repo!r}: the download did not complete ({type(e).__name__}: {_first_line(e)}); nothing "
                   "was loaded, and rerunning resumes it") from None


def hub_dataset_file(spec: str, *, token: str | bool | None = None, local_files_only: bool = False) -> Path:
  """`org/name[@revision]:path/in/repo` of a hub *dataset* -> the file in the local hub cache, downloaded with
  huggingface_hub when missing (the same environment, offline switch and one-line errors as models)."""
  import huggingface_hub
  hub_id, sep, filename = spec.partition(":")
  repo, _, revision = hub_id.partition("@")
  if not sep or not filename or not HUB_ID.match(hub_id):
    raise ValueError(f"hub dataset file {spec!r}; expected 'org/name[@revision]:path/in/repo'")
  with hub_errors(repo, hub_id, revision or None, local_files_only, kind="dataset"):
    return Path(huggingface_hub.hf_hub_download(
        repo, filename, repo_type="dataset", revision=revision or None, token=token,
        local_files_only=local_files_only or offline(), cache_dir=hub_cache_dir(),
        endpoint=os.environ.get("HF_ENDPOINT") or None))


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__
