"""`generate`: check the arguments, place them, and run the whole generation as one compiled program.

`generate` compiles one XLA program per (network graph, sampler, shapes, options); everything from the first to
the last denoising step runs inside it, with no host round trip per step.  The step itself lives in
dlm/engine/step.py (a free function that `lax.while_loop` here and the Python driver `generate_steps` share);
how it obtains hidden states is a forward program chosen at trace time (dlm/engine/programs.py); which sampler
capabilities combine with which settings is one table (dlm/engine/capabilities.py).

Blocks advance in lockstep over the batch: the loop moves to block b+1 once every row is done with block b.
A row that finishes a block early waits without being charged NFE (per-row counts are what a batch-1 run
would spend); rows finish at different times and their counts differ.

KV-cache policies (`cache=`, see dlm/engine/cache.py): every block starts with a full forward that refreshes the
cache and is that step's prediction; later steps of the block recompute a window.  Blocks are in lockstep, so the
window is shared by the rows and each policy is one `lax.switch` between static-shape forward programs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm.engine.block_layout import place_prompts, to_caller
from dlm.engine.cache import DEFAULT_WINDOW, CachePlan, check_cache, plan_cache
from dlm.engine.capabilities import check_combination
from dlm.engine.state import Generation
from dlm.engine.step import StepContext, finish, initial_state, running, step
from dlm.kernels.attention import ATTENTION_IMPLS
from dlm.kernels.head import IMPLEMENTATIONS, HeadBlocks, HeadRequest
from dlm.model.transformer import Transformer
from dlm.parallel.mesh import current_mesh, use_mesh
from dlm.parallel.rules import place_params, replicate, shard_batch, shard_rows, to_host, unpad_rows
from dlm.samplers.base import Sampler


@dataclasses.dataclass(frozen=True)
class EngineSpec:
  """Static options of one compiled generation program."""

  gen_length: int
  block_length: int
  history_length: int  # rows of the recorded trace: the sampler's own step bound
  cache: str = "none"
  record: bool = False
  stop_at_eos: bool = False
  plan: CachePlan | None = None  # window geometry of a cache policy (None for 'none')
  probe: bool = False  # also run a full forward at every step and record the cached prediction's error
  head: str = "chunked"  # decode head implementation (dlm.kernels.head): 'ref', 'chunked' or 'pallas'
  head_blocks: HeadBlocks | None = None  # tile sizes of the fused head (None: its defaults)
  attention: str = "xla"  # attention backend (dlm.kernels.attention)
  mesh: jax.sharding.Mesh | None = None  # shard the batch / parameters / KV cache over it (dlm/parallel)
  # the sampler capabilities the program runs with: `check_combination`'s verdict, made once in `_prepare`
  capabilities: frozenset[str] = frozenset()
  # a block-causal model's prompt placement (dlm/engine/block_layout.py); host arrays, compared by identity
  placement: object = dataclasses.field(default=None, compare=False, hash=False)

  @property
  def trace_length(self) -> int:
    """Rows of the per-iteration probe trace (the same bound as the recorded history)."""
    return self.history_length if self.probe else 0

  @property
  def num_blocks(self) -> int:
    return self.gen_length // self.block_length


HEAD_CHOICES = ("auto",) + IMPLEMENTATIONS
ATTENTION_CHOICES = ("auto",) + ATTENTION_IMPLS


@functools.cache
def _device_defaults() -> dict:
  import json
  from importlib import resources
  try:
    return json.loads(resources.files("dlm.kernels").joinpath("device_defaults.json").read_text())
  except (FileNotFoundError, ValueError):
    return {}


def device_default(kind: str) -> str:
  """What `head="auto"` / `attention="auto"` (kind "head" / "attention") run on this backend: the choice
  scripts/device_check.py measured there and stored in kernels/device_defaults.json, else the chunked XLA head and
  XLA attention (which run everywhere; docs/perf.md)."""
  fallback = {"head": "chunked", "attention": "xla"}[kind]
  choice = _device_defaults().get(jax.default_backend(), {}).get(kind, fallback)
  return choice if choice in (IMPLEMENTATIONS if kind == "head" else ATTENTION_IMPLS) else fallback


def resolve_head(head: str, rows: int | None = None, vocab: int | None = None) -> str:
  """'auto' -> the implementation measured best on this backend by scripts/device_check.py (`device_default`);
  the chunked XLA head where nothing was measured.  Where the backend also records `ref_max_logits`, an 'auto'
  head over rows x vocab <= that many logits runs the reference instead: on CPU one [N, V] matmul beats the
  tile loop, whose every tile copies its slice of the weights, up to about 4M logits (16 MiB; docs/perf.md §4)."""
  if head not in HEAD_CHOICES:
    raise ValueError(f"head={head!r}; expected one of {HEAD_CHOICES}")
  if head != "auto":
    return head
  choice = device_default("head")
  small = _device_defaults().get(jax.default_backend(), {}).get("ref_max_logits")
  if choice == "chunked" and isinstance(small, int) and rows and vocab and rows * vocab <= small:
    return "ref"
  return choice


def resolve_attention(attention: str) -> str:
  """'auto' -> the backend measured best on this backend by scripts/device_check.py; 'xla' where nothing was."""
  if attention not in ATTENTION_CHOICES:
    raise ValueError(f"attention={attention!r}; expected one of {ATTENTION_CHOICES}")
  return device_default("attention") if attention == "auto" else attention


def head_rows(sampler: Sampler, batch: int, gen_length: int, block_length: int) -> int:
  """Rows of one head call: the batch times the sampler's view (its block, or every answer slot)."""
  return batch * (gen_length if sampler.view_span == "answer" else block_length)


def _check_inputs(model, prompts, prompt_valid, sampler, gen_length, block_length, cache, window,
                  max_nfe) -> frozenset[str]:
  """Refuse bad arguments in one line -> the sampler capabilities the program runs with."""
  if not isinstance(model, Transformer):
    raise TypeError(f"model must be a dlm Transformer, got {type(model).__name__}")
  if not isinstance(sampler, Sampler):
    raise TypeError(f"sampler must be a dlm.samplers.Sampler, got {type(sampler).__name__}")
  if prompts.ndim != 2:
    raise ValueError(f"prompts must be [B, P] token ids, got {prompts.shape=}")
  if not jnp.issubdtype(prompts.dtype, jnp.integer):
    raise ValueError(f"prompts must hold integer token ids, got {prompts.dtype=}")
  if prompt_valid is not None and prompt_valid.shape != prompts.shape:
    raise ValueError(f"{prompt_valid.shape=} must equal {prompts.shape=}")
  if not isinstance(gen_length, int) or gen_length <= 0:
    raise ValueError(f"{gen_length=} must be a positive int")
  block_causal = model.cfg.block_causal  # its answer grows by whole blocks: gen_length is a minimum of new tokens
  if not isinstance(block_length, int) or block_length <= 0 or (gen_length % block_length and not block_causal):
    raise ValueError(f"{block_length=} must be a positive divisor of {gen_length=}")
  total = prompts.shape[1] + gen_length
  if total > model.cfg.max_len and not block_causal:  # a block-causal canvas is checked once placed
    raise ValueError(f"prompt length {prompts.shape[1]} + {gen_length=} = {total} exceeds the model's "
                     f"max_len={model.cfg.max_len}")
  check_cache(cache, window)
  if cache == "block":
    if not block_causal:
      raise ValueError("cache='block' is the exact cache of a block-causal model (SDAR, Fast-dLLM v2); this model "
                       f"is {model.cfg.attention_layout} (use 'prefix', 'dual' or 'window')")
    if sampler.cfg_scale > 0 or sampler.soft_inputs:
      raise ValueError(f"cache='block' runs without CFG and soft inputs; {type(sampler).__name__} has "
                       f"cfg_scale={sampler.cfg_scale}, soft_inputs={sampler.soft_inputs}")
  if sampler.block_start_ar and (cache != "block" or not model.cfg.logit_shift):
    raise ValueError(f"{type(sampler).__name__} starts each block with a left-to-right token, which cache='block' "
                     f"places on a block-causal model with shifted logits (Fast-dLLM v2); got {cache=} on a "
                     f"{model.cfg.arch} model")
  if max_nfe is not None and (not isinstance(max_nfe, int) or max_nfe <= 0):
    raise ValueError(f"{max_nfe=} must be a positive int or None")
  if not block_causal:  # validated against the placed answer length (`_place_block_causal`)
    sampler.validate(gen_length, block_length)
  for name in ("head_request", "verify_request"):
    if not isinstance(getattr(sampler, name), HeadRequest):
      raise TypeError(f"sampler.{name} must be a dlm.kernels.HeadRequest, got {getattr(sampler, name)!r}")
  if sampler.view_span not in ("block", "answer"):
    raise ValueError(f"sampler.view_span={sampler.view_span!r}; expected 'block' or 'answer'")
  # Which capabilities combine with which settings: one table (dlm/engine/capabilities.py).
  return check_combination(sampler, cache=cache, cfg_scale=sampler.cfg_scale, logit_shift=model.cfg.logit_shift)


def generate(model: Transformer, prompts, prompt_valid=None, *, sampler: Sampler, gen_length: int,
             block_length: int | None = None, cache: str = "none", window: int = DEFAULT_WINDOW,
             max_nfe: int | None = None, key: jax.Array | None = None, record: bool = False,
             stop_at_eos: bool = False, head: str = "auto", head_blocks: HeadBlocks | None = None,
             attention: str = "auto", sampler_params=None, mesh: jax.sharding.Mesh | None = None) -> Generation:
  """Fill `gen_length` answer slots after each (left-padded) prompt.

  prompts: [B, P] int token ids, left-padded; prompt_valid: [B, P] bool (False on padding; default all True).
  cache: 'none' (full forward every step), 'prefix', 'dual' or 'window' (dlm/engine/cache.py).  A cached step
    still counts one NFE per row (DESIGN.md §3); `Generation.tokens_computed` counts the positions recomputed.
  window: with cache='window', the tokens recomputed on each side of the active block (ignored otherwise).
  max_nfe: per-row budget of network forward calls (default: what the sampler needs to finish).
  stop_at_eos: a row stops once an end-of-text token is committed with everything before it resolved; the
    slots after it are set to end-of-text and cost nothing.
  head: the decode head ('chunked': a fused XLA scan over vocabulary tiles that writes no [B, Bk, V] logits
    unless the sampler asks for them; 'ref' materialises them; 'pallas' runs kernels/head_pallas.py).  'auto':
    this backend's measured choice (`resolve_head`): on CPU 'ref' up to 4M logits per head call, else 'chunked'.
    Every implementation gives the sampler the same statistics (the same sample for the same key).
  attention: the attention backend ('auto' = 'xla'; 'dot_product', 'cudnn', 'splash': dlm.kernels.attention).
  sampler_params: a pytree the sampler reads as `View.params` (learned heads' weights, APD's AR model), passed
    as a traced argument: new weights reuse the compiled program.  None: `sampler.default_params()`.
  mesh: a device mesh (dlm.parallel.MeshSpec(...).make()) to run over; default the current one
    (`dlm.parallel.use_mesh`), else one device.  The batch is split over its data x fsdp x expert devices (padded to a
    multiple with copies of row 0, dropped from the result), parameters placed by dlm/parallel/rules.py;
    results are the single-device ones (docs/parallel.md).  Under several processes, host `prompts` are the
    global batch (every process passes the same) and the result is all-gathered to host arrays on every
    process; a global jax.Array (`dlm.parallel.rules.global_batch`: each process built only its own rows) gets
    a result of global arrays (`dlm.parallel.rules.to_host` gathers them).
  """
  args, statics = _prepare(model, prompts, prompt_valid, sampler=sampler, gen_length=gen_length,
                           block_length=block_length, cache=cache, window=window, max_nfe=max_nfe, key=key,
                           record=record, stop_at_eos=stop_at_eos, head=head, head_blocks=head_blocks,
                           attention=attention, sampler_params=sampler_params, mesh=mesh)
  out, _ = _generate_jit(*args, **statics)
  return _result(model, out, args, prompts, statics["spec"], gen_length, stop_at_eos)


def _result(model, out, args, prompts, spec: EngineSpec, gen_length: int, stop_at_eos: bool):
  """The compiled program's Generation as the caller gets it (generate's and generate_steps' last step)."""
  if spec.placement is not None:  # a block-causal model: back from the placed canvas to the caller's prompts
    cfg = model.cfg
    if spec.mesh is not None:
      out = to_host(unpad_rows(out, len(spec.placement.answer_start)))
    return to_caller(out, spec.placement, prompts, gen_length, mask_id=cfg.mask_id, end_ids=cfg.end_ids,
                     stop_at_eos=stop_at_eos)
  return _deliver(out.replace(prompt_length=args[2].shape[1]), prompts, spec)


def _deliver(out, prompts, spec: EngineSpec):
  """A result pytree with a leading batch axis as the caller gets it: under a mesh the padding rows dropped and,
  under several processes with host prompts, gathered to host arrays on every process."""
  if spec.mesh is None:
    return out
  out = unpad_rows(out, len(prompts))
  if jax.process_count() > 1 and not (isinstance(prompts, jax.Array) and not prompts.is_fully_addressable):
    out = to_host(out)  # host prompts (the same on every process) get host results, every row on every process
  return out


def _prepare(model, prompts, prompt_valid=None, *, sampler, gen_length, block_length=None, cache="none",
             window=DEFAULT_WINDOW, max_nfe=None, key=None, record=False, stop_at_eos=False, probe=False,
             head="auto", head_blocks=None, attention="auto", sampler_params=None, mesh=None):
  """Check the arguments -> (positional args, static kwargs) of `_generate_jit` (also used to time its compile)."""
  mesh = current_mesh() if mesh is None else mesh

  def as_array(x, dtype=None):  # under a mesh host data stays on the host: shard_batch cuts it into shards
    return np.asarray(x, dtype) if mesh is not None and not isinstance(x, jax.Array) else jnp.asarray(x, dtype)

  prompts = as_array(prompts)
  if prompt_valid is not None:
    prompt_valid = as_array(prompt_valid, bool)
  block_length = gen_length if block_length is None else block_length
  capabilities = _check_inputs(model, prompts, prompt_valid, sampler, gen_length, block_length, cache, window,
                               max_nfe)
  if prompt_valid is None:
    prompt_valid = jnp.ones(prompts.shape, bool)
  placement = None
  if model.cfg.block_causal:
    placement = _place_block_causal(model, prompts, prompt_valid, sampler, gen_length, block_length, mesh)
    prompts, prompt_valid = jnp.asarray(placement.prompts), jnp.asarray(placement.prompt_valid)
    gen_length = placement.gen_length
  if mesh is not None:
    prompts, prompt_valid = shard_batch(mesh, prompts.astype(np.int32), prompt_valid)
  forwards_per_step = 2 if sampler.cfg_scale > 0 else 1
  budget = sampler.max_nfe(gen_length, block_length) * forwards_per_step if max_nfe is None else max_nfe
  traced = record or (probe and cache not in ("none", "block"))
  history_length = max(sampler.max_nfe(gen_length, block_length), budget // forwards_per_step) if traced else 0
  plan = None if cache in ("none", "block") else plan_cache(cache, prompt_length=prompts.shape[1], gen_length=gen_length,
                                                 block_length=block_length, shift=model.cfg.logit_shift,
                                                 window=window)
  spec = EngineSpec(gen_length=gen_length, block_length=block_length, history_length=history_length,
                    cache=cache, record=record, stop_at_eos=stop_at_eos, plan=plan, probe=probe and cache not in ("none", "block"),
                    head=resolve_head(head, rows=head_rows(sampler, prompts.shape[0], gen_length, block_length),
                                      vocab=model.cfg.vocab_size), head_blocks=head_blocks, attention=resolve_attention(attention),
                    mesh=mesh, capabilities=capabilities, placement=placement)
  key = jax.random.key(0) if key is None else key
  graphdef, state = nnx.split(model)
  # The budget is a traced argument, so sweeping max_nfe reuses one compiled program.
  max_steps = jnp.int32(budget // forwards_per_step)
  if sampler_params is None:
    sampler_params = sampler.default_params(gen_length, block_length)
  params = () if sampler_params is None else sampler_params
  if mesh is not None:
    state = place_params(model, state, mesh)
    params, key = replicate(mesh, (params, key))
  answer = None if placement is None else (placement.answer_init, placement.answer_start)
  if answer is not None:
    answer = shard_rows(mesh, answer) if mesh is not None else tuple(map(jnp.asarray, answer))
  args = (graphdef, state, prompts.astype(jnp.int32), prompt_valid, key, max_steps, params, answer)
  return args, dict(sampler=sampler, spec=spec)


def _place_block_causal(model, prompts, prompt_valid, sampler, gen_length, block_length, mesh):
  """A block-causal model's canvas (dlm/engine/block_layout.py), its limits checked in one line each."""
  cfg = model.cfg
  if cfg.block_size % block_length:
    raise ValueError(f"{block_length=} must divide the model's block_size={cfg.block_size} (a block-causal model "
                     f"decodes its blocks, or sub-blocks of them, in order)")
  placement = place_prompts(prompts, prompt_valid, block_size=cfg.block_size, gen_length=gen_length,
                            mask_id=cfg.mask_id, pad_id=cfg.eos_id if cfg.pad_id is None else cfg.pad_id)
  total = placement.prompts.shape[1] + placement.gen_length
  if total > cfg.max_len:
    raise ValueError(f"the placed canvas ({placement.prompts.shape[1]} prompt + {placement.gen_length} answer "
                     f"slots for {gen_length=}) exceeds the model's max_len={cfg.max_len}")
  sampler.validate(placement.gen_length, block_length)
  return placement


@functools.partial(jax.jit, static_argnames=("graphdef", "sampler", "spec"))
def _generate_jit(graphdef, state, prompts, prompt_valid, key, max_steps, params, answer=None, *,
                  sampler: Sampler, spec: EngineSpec):
  """The whole generation as one program: `step` (dlm/engine/step.py) in a `lax.while_loop`.
  answer: None, or a block-causal placement's (answer_init [B, G], answer_start [B]).
  -> (Generation, aux): aux holds the loop's iteration counts (and the divergence probe) for bench/reports."""
  with use_mesh(spec.mesh):  # the network reads it while tracing (an MoE layer splits its experts over it)
    ctx = StepContext(graphdef, state, prompts, prompt_valid, params, max_steps, sampler=sampler, spec=spec,
                      answer=answer)
    final = jax.lax.while_loop(functools.partial(running, ctx), functools.partial(step, ctx),
                               initial_state(ctx, key))
    return finish(ctx, final)
