"""The models shipped inside the package, and loading a model by the name or path a user types.

`bundled` (small, 48-token vocabulary, the short tasks; the fast tests use it), `testbed` (the long tasks too:
chain, 9x9/6x6 Sudoku, hmm128; canvases up to 256) and `testbed_bd` (the testbed's block-diffusion twin:
block-causal attention, blocks of 8).  `load_named` is what every command and experiment file
calls with a `--model` value; `dlm.load` accepts the same names.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED_MODELS = {"bundled": ASSETS / "bundled", "testbed": ASSETS / "testbed", "testbed_bd": ASSETS / "testbed_bd"}
RECIPES = {"bundled": "bundled.yaml", "testbed": "testbed.yaml", "testbed_bd": "testbed_bd.yaml"}


def shipped_folder(name: str) -> Path:
  """The folder of a shipped model; FileNotFoundError (naming the recipe that makes it) when it is missing."""
  folder = SHIPPED_MODELS[name]
  if not (folder / "params.safetensors").is_file():
    raise FileNotFoundError(f"the {name} model is missing from {folder}; train it with `dlm train --config "
                            f"configs/{RECIPES[name]}` or pass --model")
  return folder


def model_source_problem(text: str) -> str | None:
  """None when `text` names a model dlm can load (a shipped model, a folder, or a hub id `org/name[@revision]`),
  else what is wrong with it, in words that end a one-line error (the CLI's --model, an experiment's models)."""
  if text in SHIPPED_MODELS:
    return None
  path = Path(text).expanduser()
  if path.exists():
    return None if path.is_dir() else f"expected a model folder with config.json, {text} is a file"
  from dlm.io.hub import HUB_ID
  if HUB_ID.match(text):
    return None  # read from the local cache or downloaded (dlm.io.hub)
  return f"expected {' or '.join(SHIPPED_MODELS)}, a model folder or a hub id org/name; {text} does not exist"


def load_named(path: str | None, dtype: str | None = None, *, with_tokenizer: bool = False,
               default: str = "bundled"):
  """A shipped model's name, a model folder or a hub id -> (model, name) or, with_tokenizer, (model, name, HF
  tokenizer or None for the character tokenizer).  Under a current mesh (`dlm.parallel.use_mesh`, the CLI's
  `--mesh`) the weights go straight onto it (dlm/parallel/rules.py)."""
  from dlm.io.params import load_model
  from dlm.parallel.mesh import current_mesh
  path = default if path is None else path
  if path in SHIPPED_MODELS:
    model, name, tokenizer = load_model(shipped_folder(path), dtype=dtype, mesh=current_mesh()), path, None
  else:
    import dlm
    model, tokenizer = dlm.load(path, mesh=current_mesh(), **({} if dtype is None else {"dtype": dtype}))
    name = path
  return (model, name, tokenizer) if with_tokenizer else (model, name)
