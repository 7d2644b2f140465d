"""`dlm sample`: print completions for a prompt or a task."""

from __future__ import annotations

import json
from pathlib import Path

from dlm.cli.common import (_check_head, _load_model, _settings, add_common, add_scaled, existing_dir, positive_int,
                            sampler_name, task_name, writable_file)

def cmd_sample(args):
  import jax
  import numpy as np
  from dlm.engine import generate
  from dlm.samplers import make_sampler
  from dlm.tasks import TESTBED_TASKS, TOKENIZER, get_task
  default = "testbed" if args.task in TESTBED_TASKS else "bundled"
  writable_file(args.out)
  model, model_name, hf_tokenizer = _load_model(args.model, args.dtype, with_tokenizer=True, default=default)
  if args.head:
    _check_head(args.head, model_name)
  settings = _settings(args.set)
  if args.steps is not None:
    settings["steps"] = args.steps
  if args.head:
    settings["head"] = args.head
  sampler = make_sampler(args.sampler, **settings)
  task = None
  if args.task and args.prompt is not None:
    raise ValueError("give either --prompt or --task, not both")
  if args.task:
    if hf_tokenizer is not None:
      raise ValueError("--task needs the character-level task model (the bundled one), not a Hugging Face model")
    task = get_task(args.task)
    exs = task.examples(args.n, seed=args.seed)
    prompts, valid = _task_prompts(task, exs)
    gen_length = args.gen_length or task.gen_length
    texts = [e.prompt for e in exs]
  else:
    if args.prompt is None:
      raise ValueError("give --prompt TEXT (e.g. '<add>0012+0034=') or --task NAME")
    if hf_tokenizer is None:
      ids = TOKENIZER.encode(args.prompt)
    elif args.chat:
      ids = hf_tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}])
    else:
      ids = hf_tokenizer.encode(args.prompt)
    prompts, valid = np.asarray([ids], np.int32), np.ones((1, len(ids)), bool)
    gen_length = args.gen_length or 16
    texts = [args.prompt]
  if isinstance(prompts, np.ndarray) and int(prompts.max()) >= model.cfg.vocab_size:
    raise ValueError(f"the prompt uses token id {int(prompts.max())} but the model's vocabulary has "
                     f"{model.cfg.vocab_size} entries (the testbed tasks and characters need --model testbed)")
  if hf_tokenizer is None and model.cfg.vocab_size > len(TOKENIZER.itos):
    raise ValueError(f"the model's vocabulary ({model.cfg.vocab_size}) is larger than the character tokenizer's "
                     f"({len(TOKENIZER.itos)}), so its answers cannot be decoded; use a model with its own "
                     f"tokenizer files in the folder, or --model testbed for the tasks and characters")
  block = args.block_length or (task.block_length if task is not None else None) or gen_length
  from dlm.parallel.distributed import fault_point, is_primary
  fault_point("generate")
  out = generate(model, prompts, valid, sampler=sampler, gen_length=gen_length, block_length=block,
                 key=jax.random.key(args.seed), stop_at_eos=args.stop_at_eos)
  from dlm.parallel.rules import to_host
  out = to_host(out)  # rows of every process, on every process
  records = []
  for i, text in enumerate(texts):
    answer = np.asarray(out.answers[i])
    if hf_tokenizer is None:
      completion = TOKENIZER.decode(answer)
    else:
      end = int(out.gen_tokens[i])
      completion = hf_tokenizer.decode(answer[:end], skip_special_tokens=True)
    record = dict(prompt=text, completion=completion, nfe=int(out.nfe[i]), tokens=answer.tolist())
    line = f"{text:<24} -> {completion:<20} nfe={int(out.nfe[i])}"
    if task is not None:
      record["score"] = task.score_one(exs[i].prompt, completion)
      line += f" score={record['score']:.3f}"
    records.append(record)
    if is_primary():
      print(line)
  if args.out and is_primary():  # one writer, and only once the whole run succeeded
    from dlm.io.params import atomic_write
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text))


def _task_prompts(task, exs):
  """A task's prompts [N, P] and mask: as host arrays on one process; under a mesh spanning processes, the global
  batch (padded to a multiple of data x fsdp) of which this process encodes only the rows its devices hold."""
  import jax
  from dlm.parallel.mesh import current_mesh, padded_rows
  mesh = current_mesh()
  if mesh is None or jax.process_count() == 1:
    prompts, valid, _ = task.encode(exs)
    return prompts, valid
  from dlm.parallel.distributed import local_rows
  from dlm.parallel.rules import global_batch
  rows = padded_rows(len(exs), mesh)
  mine = local_rows(mesh, rows)
  prompts, valid, _ = task.encode([exs[min(i, len(exs) - 1)] for i in mine])  # padding rows repeat the last
  return global_batch(mesh, prompts, valid, global_rows=rows)


def add_parser(sub):
  sampler_name_, task_name_ = sampler_name(), task_name()
  p = sub.add_parser("sample", help="print completions for a prompt or a task")
  add_common(p)
  p.add_argument("--prompt", default=None)
  p.add_argument("--chat", action="store_true", help="wrap --prompt in the tokenizer's chat template")
  p.add_argument("--task", default=None, type=task_name_)
  p.add_argument("--n", type=positive_int, default=4)
  p.add_argument("--sampler", default="low_confidence", type=sampler_name_)
  p.add_argument("--steps", type=positive_int, default=None)
  p.add_argument("--set", nargs="*", default=None)
  p.add_argument("--gen-length", type=positive_int, default=None)
  p.add_argument("--block-length", type=positive_int, default=None)
  p.add_argument("--stop-at-eos", action="store_true")
  p.add_argument("--head", default=None, type=existing_dir, help="a trained head folder (learn2pd, adjust)")
  p.add_argument("--out", default=None, help="also write the completions as JSONL (process 0, atomically)")
  add_scaled(p)
  p.set_defaults(fn=cmd_sample)
