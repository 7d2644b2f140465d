"""`dlm collect`: record a head's training data (Learn2PD's EGP replay, ADJUST's trajectories)."""

from __future__ import annotations

from dlm.cli.common import (_load_model, add_common, nonnegative_float, positive_int, task_name)

def cmd_collect(args):
  from dlm.tasks import TESTBED_TASKS, get_task
  task = get_task(args.task)
  if args.block_length is not None:
    import dataclasses
    if task.gen_length % args.block_length:
      raise ValueError(f"--block-length {args.block_length} must divide the task's gen_length {task.gen_length}")
    task = dataclasses.replace(task, block_length=args.block_length)
  if args.temperature is not None and args.kind != "joint":
    raise ValueError("--temperature applies to --kind joint only (the EGP replay is greedy)")
  default = "testbed" if args.task in TESTBED_TASKS else "bundled"
  model, name = _load_model(args.model, args.dtype, default=default)
  from dlm.eval.compare import check_task_fits
  check_task_fits(model, task)
  if args.kind == "joint":
    from dlm.heads.joint import collect_joint_data
    store = collect_joint_data(model, task, args.out, n=args.n, batch=args.batch, model_name=str(name),
                               seed=args.seed, temperature=args.temperature)
    print(f"{store.rows} trajectories in {args.out}")
    return
  from dlm.heads.filter import collect_filter_data
  store = collect_filter_data(model, task, args.out, n=args.n, batch=args.batch, model_name=str(name),
                              seed=args.seed)
  print(f"{store.rows} rows from {store.units_done} prompts in {args.out}")


def add_parser(sub):
  task_name_ = task_name()
  p = sub.add_parser("collect", help="record a head's training data into a zarr3 store (--kind egp: Learn2PD's "
                     "EGP replay; joint: ADJUST's one-token-per-step trajectories); resumes an interrupted run")
  add_common(p)
  p.add_argument("--kind", default="egp", choices=["egp", "joint"])
  p.add_argument("--task", required=True, type=task_name_)
  p.add_argument("--n", type=positive_int, default=512, help="prompts")
  p.add_argument("--batch", type=positive_int, default=32)
  p.add_argument("--block-length", type=positive_int, default=None, help="default: the task's own block")
  p.add_argument("--temperature", type=nonnegative_float, default=None,
                 help="joint: sampling temperature of the trajectories (default: the task's, hmm 1, others 0)")
  p.add_argument("--out", required=True)
  p.set_defaults(fn=cmd_collect)
