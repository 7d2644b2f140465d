"""`dlm compare` on a block-causal model, and two models side by side (`--models`, `tag_models`)."""

import dataclasses

import numpy as np

from dlm.engine.block_layout import placed_answer_length
from dlm.eval.aup import aup_table
from dlm.eval.compare import GridEntry, cell_setup, compare, format_table, tag_models
from dlm.model.config import ModelConfig
from dlm.model.transformer import init_model
from dlm.tasks import TOKENIZER, get_task

BIDIRECTIONAL = ModelConfig(vocab_size=TOKENIZER.vocab_size, mask_id=TOKENIZER.mask_id, eos_id=TOKENIZER.eos_id,
                            pad_id=TOKENIZER.pad_id, d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, max_len=512,
                            dtype="float32", param_dtype="float32")
BLOCK_CAUSAL = dataclasses.replace(BIDIRECTIONAL, attention_layout="block_causal", block_size=8)


def test_placed_answer_length_has_room_for_any_tail():
  assert placed_answer_length(36, 8) == 48 and placed_answer_length(32, 8) == 40 and placed_answer_length(5, 1) == 5


def test_cell_setup_decodes_the_models_own_blocks():
  chain = get_task("chain128")  # its own block is 32, which a model of blocks of 8 decodes as its blocks of 8
  entry = GridEntry("low_confidence", (("steps", "G"),))
  sampler, engine = cell_setup(chain, entry, block_length=None, stop_at_eos=False, model_block=8)
  assert engine["block_length"] == 8 and engine["gen_length"] == 128
  assert sampler.steps == placed_answer_length(128, 8)  # `G` is one token per step over the placed answer
  _, engine = cell_setup(chain, entry, block_length=4, stop_at_eos=False, model_block=8)
  assert engine["block_length"] == 4  # a sub-block of the model's block is kept
  sampler, engine = cell_setup(chain, entry, block_length=None, stop_at_eos=False)
  assert engine["block_length"] == 32 and sampler.steps == 128  # a bidirectional model: unchanged


def test_two_models_side_by_side():
  grid = [GridEntry("low_confidence", (("steps", "G"),)), GridEntry("threshold", (("tau", 0.9),)),
          GridEntry("threshold", (("tau", 0.9),), engine=(("cache", "block"),))]
  records = []
  for name, cfg in (("bidirectional", BIDIRECTIONAL), ("block", BLOCK_CAUSAL)):
    records += compare(init_model(cfg, seed=0), grid, ["sudoku6"], n=2, batch=2, progress=False, model_name=name)
  # the exact block cache runs on the block-causal model only; the bidirectional model skips that cell
  assert [(r["model"], r["cache"]) for r in records] == [("bidirectional", "none")] * 2 + [
      ("block", "none"), ("block", "none"), ("block", "block")]
  block_rows = [r for r in records if r["model"] == "block"]
  assert all(r["block_length"] == 8 for r in block_rows)
  one_per_step = block_rows[0]
  # `steps: G` gives each block of 8 its 8 steps (LLaDA's rule spends them even where the prompt tail fills slots)
  assert 36 <= one_per_step["nfe_mean"] <= 48 and one_per_step["tpf"] <= 1.0
  # the exact cache changes the cost, never the tokens of a deterministic rule
  assert block_rows[1]["score"] == block_rows[2]["score"]
  tagged = tag_models(records)
  assert {r["family"] for r in tagged} >= {"low_confidence @ block", "low_confidence @ bidirectional"}
  assert tag_models(tagged) == tagged and tag_models(records[:2]) == records[:2]
  table = format_table(tagged)
  assert "model" in table.splitlines()[0] and "wall s" in table.splitlines()[0]
  rows = aup_table(tagged)
  assert {r["family"] for r in rows} == {r["family"] for r in tagged}
  for row in rows:  # each model's families are anchored at its own one-token-per-step run
    model = row["family"].split(" @ ")[1]
    anchor = next(r for r in tagged if r["model"] == model and r["sampler"] == "low_confidence")
    assert row["anchor"]["tpf"] == anchor["tpf"] and np.isclose(row["anchor"]["score"], anchor["score"])


def test_bench_on_a_block_causal_model(capsys):
  """`dlm bench` places the canvas like generate: no replay or divergence report over the caller's canvas (every
  cache is exact there); both caches give the same tokens."""
  import json
  from dlm.cli import main
  results = {}
  for cache in ("dual", "block"):  # dual: the cache that crashed here (a replay over the caller's canvas)
    assert main(["bench", "--random-model", "preset=tiny-sdar", "--sampler", "sdar", "--set", "steps=4",
                 "--block-length", "4", "--gen-length", "12", "--prompt-length", "6", "--batch", "2",
                 "--repeats", "1", "--cache", cache]) == 0
    out = capsys.readouterr().out
    results[cache] = json.loads(out[out.index("{"):])
  for cache, r in results.items():
    assert r["replay_s"] is None and "divergence" not in r, cache
    assert r["tokens"] == results["dual"]["tokens"] and r["tokens"] <= 2 * 12  # G per row, never a placed slot
  # the prompt tail (2) and 12 new tokens fill 4 blocks: the prefill and a store before blocks 2, 3 and 4
  assert results["block"]["nfe_mean"] == results["dual"]["nfe_mean"] + 4  # dual charges the denoising steps only
