"""Head folders: where a named head lives and the check that a folder holds a complete head of the right kind."""

from __future__ import annotations

import json
from pathlib import Path


def asset_or_path(name: str, alias: str, asset: str) -> Path:
  """`alias` ("testbed", "bundled") names a folder shipped under dlm/assets; anything else is a path."""
  if name == alias:
    from dlm.assets import ASSETS
    return ASSETS / asset
  return Path(name).expanduser()


def read_head(folder: Path, name: str, kind: str, what: str, how: str) -> dict:
  """head.json of a complete head of `kind` (written last, so its presence marks a finished head), or a one-line
  error naming the head, what was expected (`what`) and how to make one (`how`)."""
  head = Path(folder) / "head.json"
  if not head.is_file():
    raise FileNotFoundError(f"head={name!r}: no {what} at {folder} (no head.json); train one with {how}")
  info = json.loads(head.read_text())
  if info.get("kind") != kind:
    raise ValueError(f"head={name!r} is a {info.get('kind')!r} head, not {'an' if what[0] in 'AEIOU' else 'a'} "
                     f"{what}")
  return info
