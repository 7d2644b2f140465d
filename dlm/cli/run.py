"""`dlm run`: an experiment file (models x samplers x settings x tasks) into a folder."""

from __future__ import annotations

from dlm.cli.common import (_print_records, existing_file)

def cmd_run(args):
  from dlm.eval.experiment import run_experiment
  records = run_experiment(args.experiment, args.out)
  _print_records(records)
  print(f"wrote {args.out}: config.yaml, environment.json, cells/, results.json, results.csv, aup.json, frontier.png")


def add_parser(sub):
  p = sub.add_parser("run", help="run an experiment file (models x samplers x settings x tasks) into a folder; a "
                     "rerun skips finished cells")
  p.add_argument("experiment", type=existing_file)
  p.add_argument("--out", required=True)
  p.set_defaults(fn=cmd_run)
