"""A Python driver of the compiled step: watch a generation one loop iteration at a time.

`generate` runs `dlm.engine.step.step` inside one `lax.while_loop`.  `generate_steps` runs the *same* step from
Python: it compiles three programs once per setting (the initial state; the loop advanced by one iteration; the
final Generation) and yields a `Snapshot` after every iteration, so a notebook can draw the canvas as it is
decoded or stop early.  The one-iteration program is the same while loop with one more stop condition
(`iteration < until`), so its body is the very HLO `generate` runs: the last snapshot's tokens, NFE and
commit steps equal `generate(...)`'s exactly, for every sampler and cache policy (tests/test_driver.py).

Each iteration is a host round trip (dispatch and the snapshot's copy to the host), so this is for watching and
debugging; `generate` is the fast path.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

import jax
import numpy as np

from dlm.engine.block_layout import caller_canvas
from dlm.engine.generate import _prepare, _result
from dlm.engine.state import Generation, LoopState
from dlm.engine.step import StepContext, finish, initial_state, running, step
from dlm.parallel.mesh import use_mesh


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """The loop after one iteration, as host arrays.

  iteration: loop iterations run so far; block, step: the active block and the step inside it (after the
  iteration: a finished block has already moved on).
  tokens: [B, P + G] the canvas (mask id where unresolved); commit_step: [B, G] the iteration each answer slot was
  committed at (-1: not yet); nfe: [B] forward calls per row so far; batch_nfe: the batch's calls so far;
  done: [B] rows finished.
  generation: on the last snapshot only, the `Generation` that `generate` returns for the same arguments.
  """

  iteration: int
  block: int
  step: int
  tokens: np.ndarray
  commit_step: np.ndarray
  nfe: np.ndarray
  batch_nfe: int
  done: np.ndarray
  prompt_length: int
  generation: Generation | None = None

  @property
  def answers(self) -> np.ndarray:
    """[B, G] the answer slots."""
    return self.tokens[:, self.prompt_length:]

  @property
  def last(self) -> bool:
    return self.generation is not None


_STATICS = ("graphdef", "sampler", "spec")


@functools.partial(jax.jit, static_argnames=_STATICS)
def _init_jit(graphdef, state, prompts, prompt_valid, key, max_steps, params, answer, *, sampler, spec):
  with use_mesh(spec.mesh):
    ctx = StepContext(graphdef, state, prompts, prompt_valid, params, max_steps, sampler=sampler, spec=spec,
                      answer=answer)
    return initial_state(ctx, key)


@functools.partial(jax.jit, static_argnames=_STATICS)
def _advance_jit(graphdef, state, prompts, prompt_valid, key, max_steps, params, answer, loop: LoopState, until,
                 *, sampler, spec):
  """The loop of `generate`, stopped after iteration `until` (one more than the state's)."""
  del key
  with use_mesh(spec.mesh):
    ctx = StepContext(graphdef, state, prompts, prompt_valid, params, max_steps, sampler=sampler, spec=spec,
                      answer=answer)
    return jax.lax.while_loop(lambda s: running(ctx, s) & (s.iteration < until), functools.partial(step, ctx),
                              loop)


@functools.partial(jax.jit, static_argnames=_STATICS)
def _finish_jit(graphdef, state, prompts, prompt_valid, key, max_steps, params, answer, loop: LoopState, *,
                sampler, spec):
  del key
  ctx = StepContext(graphdef, state, prompts, prompt_valid, params, max_steps, sampler=sampler, spec=spec,
                    answer=answer)
  return finish(ctx, loop)[0]


def generate_steps(model, prompts, prompt_valid=None, **kwargs) -> Iterator[Snapshot]:
  """Run `generate(model, prompts, prompt_valid, **kwargs)` one loop iteration at a time; yields a `Snapshot`
  after each iteration (none when the loop runs no iteration, e.g. a zero budget is refused anyway).  The last
  snapshot carries `.generation`, equal to what `generate` returns.  Takes every keyword `generate` takes."""
  args, statics = _prepare(model, prompts, prompt_valid, **kwargs)
  spec = statics["spec"]
  p = args[2].shape[1]
  rows = len(prompts)
  loop = _init_jit(*args, **statics)

  def host(x):
    x = np.asarray(jax.device_get(x) if spec.mesh is None or jax.process_count() == 1 else _gather(x))
    return x[:rows] if x.ndim else x

  max_steps = int(args[5])

  def goes_on(loop):  # the loop's own condition (dlm.engine.step.running), read on the host
    return int(loop.iteration) < max_steps and not bool(np.all(jax.device_get(loop.done)))

  more = goes_on(loop)
  while more:
    loop = _advance_jit(*args, loop, loop.iteration + 1, **statics)
    more = goes_on(loop)
    generation = None
    if not more:
      generation = _result(model, _finish_jit(*args, loop, **statics), args, prompts, spec, kwargs["gen_length"],
                           kwargs.get("stop_at_eos", False))
    tokens, commit_step, prompt_length = host(loop.tokens), host(loop.commit_step), p
    if spec.placement is not None:  # a block-causal model: the caller's layout, as the final generation
      tokens, commit_step = caller_canvas(spec.placement, prompts, kwargs["gen_length"], tokens, commit_step)
      prompt_length = tokens.shape[1] - kwargs["gen_length"]
    yield Snapshot(iteration=int(loop.iteration), block=int(loop.block), step=int(loop.step), tokens=tokens,
                   commit_step=commit_step, nfe=host(loop.nfe), batch_nfe=int(loop.batch_nfe), done=host(loop.done),
                   prompt_length=prompt_length, generation=generation)


def _gather(x):
  from dlm.parallel.rules import to_host
  return to_host(x)
