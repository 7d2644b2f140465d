"""The `dlm` command: train, compare, sample, bench, convert."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BUNDLED = Path(__file__).resolve().parent / "assets" / "bundled"


def _parse_value(text: str):
  import yaml
  return yaml.safe_load(text)


def _load_model(path: str | None, dtype: str | None, *, with_tokenizer: bool = False):
  """-> (model, name) or, with_tokenizer, (model, name, HF tokenizer or None for the character tokenizer)."""
  from dlm.io.params import load_model
  if path is None:
    if not (BUNDLED / "params.safetensors").is_file():
      raise SystemExit(f"the bundled model is missing from {BUNDLED}; train it with `dlm train` or pass --model")
    model, name, tokenizer = load_model(BUNDLED, dtype=dtype), "bundled", None
  else:
    import dlm
    model, tokenizer = dlm.load(path, **({} if dtype is None else {"dtype": dtype}))
    name = path
  return (model, name, tokenizer) if with_tokenizer else (model, name)


def cmd_train(args):
  from dlm.train.loop import TrainConfig, train
  import dataclasses
  cfg = TrainConfig.from_yaml(args.config)
  if args.steps is not None:
    cfg = dataclasses.replace(cfg, steps=args.steps)
  train(cfg, args.out)
  print(f"model written to {Path(args.out) / 'model'}")


def cmd_compare(args):
  from dlm.eval.compare import GridEntry, compare, format_table, load_grid, write_results
  if args.grid is not None:
    grid = load_grid(args.grid)
  elif (REPO_CONFIGS / "compare_default.yaml").is_file():
    grid = load_grid(REPO_CONFIGS / "compare_default.yaml")
  else:
    grid = [GridEntry("low_confidence", (("steps", "G"),)), GridEntry("low_confidence", (("steps", "G/2"),))]
  if args.sampler:
    grid = [GridEntry(args.sampler, tuple(sorted(_settings(args.set).items())))]
  model, name = _load_model(args.model, args.dtype)
  records = compare(model, grid, args.tasks, n=args.n, batch=args.batch, seed=args.seed,
                    block_length=args.block_length, stop_at_eos=args.stop_at_eos, cache=args.cache,
                    model_name=name)
  print(format_table(records))
  if args.out:
    write_results(records, args.out)
    print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'frontier.png'}")


def _settings(pairs) -> dict:
  out = {}
  for pair in pairs or []:
    if "=" not in pair:
      raise SystemExit(f"--set expects NAME=VALUE, got {pair!r}")
    k, v = pair.split("=", 1)
    out[k] = _parse_value(v)
  return out


def cmd_sample(args):
  import jax
  import numpy as np
  from dlm.engine import generate
  from dlm.samplers import make_sampler
  from dlm.tasks import TOKENIZER, get_task
  model, _, hf_tokenizer = _load_model(args.model, args.dtype, with_tokenizer=True)
  settings = _settings(args.set)
  if args.steps is not None:
    settings["steps"] = args.steps
  sampler = make_sampler(args.sampler, **settings)
  task = None
  if args.task:
    if hf_tokenizer is not None:
      raise SystemExit("--task needs the character-level task model (the bundled one), not a Hugging Face model")
    task = get_task(args.task)
    exs = task.examples(args.n, seed=args.seed)
    prompts, valid, _ = task.encode(exs)
    gen_length = args.gen_length or task.gen_length
    texts = [e.prompt for e in exs]
  else:
    if args.prompt is None:
      raise SystemExit("give --prompt TEXT (e.g. '<add>0012+0034=') or --task NAME")
    if hf_tokenizer is None:
      ids = TOKENIZER.encode(args.prompt)
    elif args.chat:
      ids = hf_tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}])
    else:
      ids = hf_tokenizer.encode(args.prompt)
    prompts, valid = np.asarray([ids], np.int32), np.ones((1, len(ids)), bool)
    gen_length = args.gen_length or 16
    texts = [args.prompt]
  block = args.block_length or gen_length
  out = generate(model, prompts, valid, sampler=sampler, gen_length=gen_length, block_length=block,
                 key=jax.random.key(args.seed), stop_at_eos=args.stop_at_eos)
  for i, text in enumerate(texts):
    answer = np.asarray(out.answers[i])
    if hf_tokenizer is None:
      completion = TOKENIZER.decode(answer)
    else:
      end = int(out.gen_tokens[i])
      completion = hf_tokenizer.decode(answer[:end], skip_special_tokens=True)
    line = f"{text:<24} -> {completion:<20} nfe={int(out.nfe[i])}"
    if task is not None:
      line += f" score={task.score_one(exs[i].prompt, completion):.3f}"
    print(line)


def cmd_bench(args):
  import jax
  import numpy as np
  from dlm.eval.bench import bench
  from dlm.samplers import make_sampler
  model, name = _load_model(args.model, args.dtype)
  settings = _settings(args.set)
  if args.sampler in ("low_confidence", "random", "ancestral", "dream"):
    settings.setdefault("steps", args.gen_length)  # one token per step unless told otherwise
  sampler = make_sampler(args.sampler, **settings)
  rng = np.random.default_rng(args.seed)
  vocab = model.cfg.vocab_size
  prompts = rng.integers(3, vocab, size=(args.batch, args.prompt_length)).astype(np.int32)
  prompts[prompts == model.cfg.mask_id] = 3
  valid = np.ones_like(prompts, bool)
  result = bench(model, prompts, valid, sampler=sampler, gen_length=args.gen_length, block_length=args.block_length,
                 cache=args.cache, window=args.window, repeats=args.repeats)
  result.update(model=name, sampler=args.sampler, settings=sampler.settings(), batch=args.batch,
                gen_length=args.gen_length, block_length=args.block_length, cache=args.cache,
                window=args.window if args.cache == "window" else None, device=str(jax.devices()[0].device_kind),
                command="dlm " + " ".join(sys.argv[1:]))
  if args.cache != "none":
    from dlm.engine.divergence import divergence_report
    report = divergence_report(model, prompts, valid, sampler=sampler, gen_length=args.gen_length,
                               block_length=args.block_length, cache=args.cache, window=args.window)
    report.pop("row_max_logit_diff", None)
    result["divergence"] = report
  print(json.dumps(result, indent=1, default=str))


def main(argv=None):
  parser = argparse.ArgumentParser(prog="dlm", description="Sampling from masked diffusion language models")
  sub = parser.add_subparsers(dest="command", required=True)

  def common(p):
    p.add_argument("--model", default=None, help="model folder or hub id (default: the bundled model)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)

  p = sub.add_parser("train", help="train a base model on the built-in task mixture")
  p.add_argument("--config", default=str(REPO_CONFIGS / "bundled.yaml"))
  p.add_argument("--out", required=True)
  p.add_argument("--steps", type=int, default=None)
  p.set_defaults(fn=cmd_train)

  p = sub.add_parser("compare", help="run a grid of samplers on the built-in tasks")
  common(p)
  p.add_argument("--tasks", nargs="+", default=["add", "sudoku4", "sudoku4_hard", "reverse", "hmm"])
  p.add_argument("--grid", default=None, help="YAML grid (default: configs/compare_default.yaml)")
  p.add_argument("--sampler", default=None, help="run this one sampler instead of the grid")
  p.add_argument("--set", nargs="*", default=None, help="sampler settings NAME=VALUE with --sampler")
  p.add_argument("--n", type=int, default=64)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--block-length", type=int, default=None)
  p.add_argument("--stop-at-eos", action="store_true")
  p.add_argument("--cache", default="none", help="none | prefix | dual | window")
  p.add_argument("--out", default=None, help="folder for results.json and frontier.png")
  p.set_defaults(fn=cmd_compare)

  p = sub.add_parser("sample", help="print completions for a prompt or a task")
  common(p)
  p.add_argument("--prompt", default=None)
  p.add_argument("--chat", action="store_true", help="wrap --prompt in the tokenizer's chat template")
  p.add_argument("--task", default=None)
  p.add_argument("--n", type=int, default=4)
  p.add_argument("--sampler", default="low_confidence")
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--set", nargs="*", default=None)
  p.add_argument("--gen-length", type=int, default=None)
  p.add_argument("--block-length", type=int, default=None)
  p.add_argument("--stop-at-eos", action="store_true")
  p.set_defaults(fn=cmd_sample)

  p = sub.add_parser("bench", help="compile time, wall time, NFE, TPS and overhead ratio as JSON")
  common(p)
  p.add_argument("--sampler", default="low_confidence")
  p.add_argument("--set", nargs="*", default=None)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt-length", type=int, default=16)
  p.add_argument("--gen-length", type=int, default=128)
  p.add_argument("--block-length", type=int, default=32)
  p.add_argument("--cache", default="none", help="none | prefix | dual | window")
  p.add_argument("--window", type=int, default=16, help="tokens recomputed on each side of the block (cache window)")
  p.add_argument("--repeats", type=int, default=3)
  p.set_defaults(fn=cmd_bench)

  p = sub.add_parser("convert", help="convert between Hugging Face folders and dlm's format")
  from dlm.io import convert
  convert.add_arguments(p)
  p.set_defaults(fn=convert.run)

  args = parser.parse_args(argv)
  try:
    args.fn(args)
  except ValueError as e:
    print(f"dlm {args.command}: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
