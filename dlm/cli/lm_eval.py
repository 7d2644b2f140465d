"""`dlm lm-eval`: lm-evaluation-harness tasks with dlm as the model."""

from __future__ import annotations

from dlm.cli.common import (_settings, existing_dir, model_source, nonnegative_int, positive_int)

def cmd_lm_eval(args):
  import json
  from dlm.eval.lm_eval_adapter import run
  pairs = ["=".join(part.strip() for part in p.split("=", 1)) for p in args.model_args.split(",") if p.strip()]
  model_args = _settings(pairs, flag="--model-args")
  if args.model is not None:
    model_args["model"] = args.model
  results = run(args.tasks, model_args, include_path=args.include_path, limit=args.limit,
                num_fewshot=args.num_fewshot, output=args.out)
  print(json.dumps(results["results"], indent=1, default=str))


def add_parser(sub):
  p = sub.add_parser("lm-eval", help="run lm-evaluation-harness tasks with dlm as the model (--model dlm)")
  p.add_argument("--tasks", nargs="+", required=True)
  p.add_argument("--model", default=None, type=model_source, help="default: testbed")
  p.add_argument("--model-args", default="", help="k=v,...: sampler=NAME and its settings, gen_length, "
                 "block_length, batch_size, mc_num, mc_batch, check_greedy (dlm/eval/lm_eval_adapter.py)")
  p.add_argument("--include-path", default=None, type=existing_dir, help="a folder of local task YAML files")
  p.add_argument("--limit", type=positive_int, default=None)
  p.add_argument("--num-fewshot", type=nonnegative_int, default=None)
  p.add_argument("--out", default=None, help="folder for results.json")
  p.set_defaults(fn=cmd_lm_eval)
