"""`dlm run`: an experiment file (models x samplers x settings x tasks) or a recipe (a published table to
reproduce, configs/recipes/) into a folder."""

from __future__ import annotations

from dlm.cli.common import (_print_records, positive_int, writable_dir)

RECIPE_FLAGS = ("model", "data_test", "data_train", "limit")


def cmd_run(args):
  from dlm.eval.compare import read_yaml
  from dlm.eval.recipes import is_recipe, resolve_recipe_path
  args.experiment = str(resolve_recipe_path(args.experiment))
  spec = read_yaml(args.experiment, "experiment or recipe")
  if is_recipe(spec):
    return run_recipe_file(args)
  given = [f"--{f.replace('_', '-')}" for f in RECIPE_FLAGS if getattr(args, f) is not None]
  if given:
    raise ValueError(f"{' '.join(given)}: only for recipes (files with 'benchmark' and 'runs'); "
                     f"{args.experiment} is an experiment")
  from dlm.eval.experiment import run_experiment
  records = run_experiment(args.experiment, args.out)
  _print_records(records)
  print(f"wrote {args.out}: config.yaml, environment.json, cells/, results.json, results.csv, aup.json, frontier.png")


def run_recipe_file(args):
  from dlm.eval.recipes import check_out, format_recipe, load_recipe, run_recipe
  from dlm.io.shipped import model_source_problem
  recipe = load_recipe(args.experiment, model=args.model, data_test=args.data_test, data_train=args.data_train,
                       limit=args.limit)
  problem = model_source_problem(recipe["model"])
  if problem is not None:
    raise ValueError(f"model {recipe['model']!r}: {problem}")
  writable_dir(args.out)
  check_out(recipe, args.out)
  summaries = run_recipe(recipe, args.out)
  print(format_recipe(recipe, summaries))
  print(f"wrote {args.out}: config.yaml, environment.json, records.jsonl, summary.json")


def add_parser(sub):
  p = sub.add_parser("run", help="run an experiment file (models x samplers x settings x tasks) or a recipe "
                     "(configs/recipes/: a published table, measured beside published) into a folder")
  from dlm.eval.recipes import shipped_recipes
  p.add_argument("experiment", help="an experiment or recipe file, or a shipped recipe: "
                 f"{', '.join(shipped_recipes())}")
  p.add_argument("--out", required=True)
  p.add_argument("--model", default=None, help="recipes: another model than the recipe's (a hub id or folder)")
  p.add_argument("--data-test", default=None, help="recipes: another test file (.jsonl/.parquet or org/name:path)")
  p.add_argument("--data-train", default=None, help="recipes: another file of few-shot examples")
  p.add_argument("--limit", type=positive_int, default=None, help="recipes: the first N examples only")
  p.set_defaults(fn=cmd_run)
