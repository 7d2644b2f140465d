"""`dlm token-freq`: a token frequency table for PC-Sampler's calibration (dlm.io.token_freq)."""

from __future__ import annotations

from dlm.cli.common import existing_dir, existing_file, nonnegative_int, positive_int, task_name, writable_file


def cmd_token_freq(args):
  from dlm.io.token_freq import count_tokens, write_table
  if bool(args.text) == bool(args.task):
    raise ValueError("give either --text FILE... (with --tokenizer FOLDER) or --task NAME...")
  writable_file(args.out)
  if args.text:
    if args.tokenizer is None:
      raise ValueError("--text needs --tokenizer FOLDER: a model folder holding tokenizer.json")
    from dlm.io.tokenizer import HFTokenizer
    tok = HFTokenizer.from_folder(args.tokenizer)
    if tok is None:
      raise ValueError(f"--tokenizer {args.tokenizer}: no tokenizer.json in that folder")
    sequences = (tok.encode(line, add_special_tokens=False)
                 for path in args.text for line in open(path, encoding="utf-8") if line.strip())
  else:
    from dlm.tasks import get_task
    def answers():
      for name in args.task:
        task = get_task(name)
        _, _, ans = task.encode(task.examples(args.n, seed=args.seed))
        yield from ans
    sequences = answers()
  counts, total = count_tokens(sequences)
  write_table(counts, total, args.out)
  print(f"{total} tokens, {len(counts)} distinct ids -> {args.out}")


def add_parser(sub):
  p = sub.add_parser("token-freq", help="count token frequencies in text files or testbed task answers into a "
                     "PC-Sampler table (P_baseline.json layout; pc_sampler's baseline=PATH)")
  p.add_argument("--text", nargs="+", type=existing_file, default=None, help="UTF-8 text files, one document per line")
  p.add_argument("--tokenizer", type=existing_dir, default=None,
                 help="model folder whose tokenizer.json encodes --text")
  p.add_argument("--task", nargs="+", type=task_name(), default=None, help="testbed tasks whose answers are counted")
  p.add_argument("--n", type=positive_int, default=4096, help="examples per task")
  p.add_argument("--seed", type=nonnegative_int, default=0)
  p.add_argument("--out", required=True, help="the table's file (written atomically)")
  p.set_defaults(fn=cmd_token_freq)
