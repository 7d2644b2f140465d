"""`dlm convert SRC OUT`: a Hugging Face LLaDA/Dream/SDAR/Fast-dLLM v2 folder -> dlm's params format, or back with --to-hf.

    dlm convert GSAI-ML/LLaDA-8B-Instruct out/llada --dtype bfloat16     # HF folder (or cached hub id) -> dlm
    dlm convert out/llada out/llada-hf --to-hf                            # dlm -> HF layout
    dlm convert GSAI-ML/LLaDA-8B-Instruct out/llada-ckpt --sharded        # -> orbax sharded checkpoint

The output folder is written to a temporary sibling and renamed into place when complete, so a failed
conversion (corrupt input, wrong config, full disk) leaves no partial output.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from dlm.io import hf, params
from dlm.io.tokenizer import TOKENIZER_FILES


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("src", help="Hugging Face model folder or hub id (downloaded when not cached; with --to-hf: a dlm "
                      "params folder)")
  parser.add_argument("out", help="output folder (must not exist unless --overwrite)")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"),
                      help="dtype of the written parameters (default bfloat16)")
  parser.add_argument("--to-hf", action="store_true", help="convert a dlm params folder to Hugging Face layout")
  parser.add_argument("--tokenizer-dir", default=None,
                      help="with --to-hf: folder whose tokenizer files / modelling code to copy (default: SRC)")
  parser.add_argument("--max-shard-gb", type=float, default=5.0, help="with --to-hf: shard size limit")
  parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
  parser.add_argument("--sharded", action="store_true",
                      help="write an orbax sharded checkpoint (dlm.parallel.checkpoint), restorable onto any mesh "
                      "with dlm.load(OUT, mesh=...) or --mesh")


def _to_dlm(src: str, out: Path, dtype: str, overwrite: bool, sharded: bool = False) -> None:
  if (Path(src) / "params.safetensors").is_file():  # a dlm folder (e.g. to make it a sharded checkpoint)
    model, folder = params.load_model(src, dtype=dtype), Path(src)
  else:
    model, _ = hf.load_hf(src, dtype=dtype, param_dtype=dtype)
    folder = hf.resolve_model_path(src)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
  try:
    if sharded:
      from dlm.parallel.checkpoint import save_sharded
      save_sharded(model, tmp, overwrite=True)
    else:
      params.save_model(model, tmp)
    for name in TOKENIZER_FILES:  # keep the tokenizer beside the parameters
      if (folder / name).is_file():
        shutil.copy2(folder / name, tmp / name)
    hf.move_into_place(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def run(args: argparse.Namespace) -> int:
  out = Path(args.out)
  if args.to_hf and args.sharded:
    raise ValueError("--to-hf and --sharded exclude each other: --to-hf writes a Hugging Face folder, --sharded "
                     "an orbax checkpoint")
  if out.exists() and not args.overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite or choose a new folder")
  if args.to_hf:
    model = params.load_model(args.src)
    tok_dir = args.tokenizer_dir if args.tokenizer_dir is not None else args.src
    hf.export_hf(model, out, tokenizer_dir=tok_dir, dtype=args.dtype,
                 max_shard_bytes=int(args.max_shard_gb * 1024**3), overwrite=args.overwrite)
  else:
    _to_dlm(args.src, out, args.dtype, args.overwrite, sharded=args.sharded)
  print(f"wrote {out}")
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="dlm convert", description=__doc__.split("\n\n")[0])
  add_arguments(parser)
  return run(parser.parse_args(argv))


if __name__ == "__main__":
  raise SystemExit(main())
