"""The testbed (issue 14): chain / sudoku / hmm128 tasks, GSM8K answer extraction, the HMM distribution distance,
AUP against hand computation, recipe variants, and `dlm compare` on the long tasks at a tiny n."""

import math
import re

import numpy as np
import pytest

from dlm.eval.aup import anchor_entries, aup, aup_table, format_aup, quality_weight
from dlm.eval.compare import GridEntry, check_grid, compare, load_grid
from dlm.model.config import tiny_llada
from dlm.model.transformer import init_model
from dlm.tasks import TASKS, TOKENIZER, Chain, Sudoku, get_task
from dlm.tasks.chain import Problem, extract_answer, parse_problem, random_problem
from dlm.tasks.hmm import HMM, distribution_distance, reference_samples
from dlm.tasks.sudoku_grid import is_valid_grid, random_grid
from dlm.train.loop import TrainConfig


def test_tokenizer_keeps_the_small_models_ids():
  # The small bundled model has 48 embedding rows: every id of its four tasks must keep its place.
  assert TOKENIZER.stoi["<hmm>"] == 6 and TOKENIZER.stoi["|"] == 46 and TOKENIZER.vocab_size == 56
  for name in ("add", "sudoku4", "sudoku4_hard", "reverse", "hmm", "hmm128"):
    prompts, _, answers = get_task(name).encode(get_task(name).examples(50, seed=0))
    assert prompts.max() < 48 and answers.max() < 48
  assert TOKENIZER.tag_id("chain") >= 48 and TOKENIZER.encode("#### -1;?")[0] >= 48


@pytest.mark.parametrize("text, expected", [
    ("b=07+5=12;#### 12", "12"),
    ("#### 1,234", "1234"),  # commas removed, as GSM8K's extract_answer does
    ("#### -5;", "-5"),
    ("#### 3.0", "3.0"),  # a string, compared as one: "3.0" != "3"
    ("####12", None),  # the space is part of the pattern
    ("### 12", None),
    ("#### ", None),
    ("", None),
    ("#### 7;#### 8", "7"),  # the first match counts
    ("b=07+5=12;c=1", None),
])
def test_gsm8k_answer_extraction(text, expected):
  assert extract_answer(text) == expected


def test_chain_hand_case():
  p = Problem(givens=(("a", 7),), steps=(("b", "a", "+", 5), ("c", "b", "*", 2), ("d", "c", "-", "a")))
  assert p.prompt() == "a=07;b=a+5;c=b*2;d=c-a;?d"
  assert p.solution() == "b=07+5=12;c=12*2=24;d=24-07=17;#### 17"
  assert parse_problem(p.prompt()) == p
  t = Chain()
  assert t.score_one(p.prompt(), p.solution()) == 1.0
  assert t.score_one(p.prompt(), "d=24-07=17;#### 17") == 1.0  # only the final answer is scored
  assert t.score_one(p.prompt(), "b=07+5=12;#### 16") == 0.0
  assert t.score_one(p.prompt(), "#### 017") == 0.0  # string comparison, as in GSM8K
  assert t.score_one(p.prompt(), "b=07+5=12;c=12*2=24;d=24-07=17") == 0.0  # no answer line


def _eval_prompt(prompt: str) -> int:
  """Independent evaluator: Python arithmetic over the statements, in order."""
  env = {}
  for stmt in prompt.split(";")[:-1]:
    name, expr = stmt.split("=")
    env[name] = eval(re.sub(r"\b0+(\d)", r"\1", expr), {}, dict(env))  # "07" -> 7
  return env[prompt.split("?")[1]]


def test_chain_generator_values_lengths_and_padding():
  rng = np.random.default_rng(0)
  task = Chain()
  lengths, pads = [], []
  for _ in range(400):
    ex = task.sample(rng)
    answer = _eval_prompt(ex.prompt)
    assert ex.answer.endswith(f"#### {answer}") and 0 <= answer <= 99
    for stmt in ex.answer.split(";")[:-1]:  # every restated step is correct arithmetic
      lhs, rhs = stmt.split("=")[1:]
      assert eval(re.sub(r"\b0+(\d)", r"\1", lhs)) == int(rhs)
    lengths.append(len(ex.answer))
    pads.append(1 - len(ex.answer) / task.gen_length)
  assert 20 <= min(lengths) and max(lengths) <= 128
  assert np.mean(pads) >= 0.5
  assert len(task.prompt_ids(ex)) <= task.max_prompt_len
  with pytest.raises(ValueError, match="max_steps"):
    Chain(max_steps=11)
  with pytest.raises(ValueError, match="gen_length"):
    Chain(gen_length=64)


def test_chain_steps_depend_on_earlier_steps():
  rng = np.random.default_rng(1)
  problems = [random_problem(rng, 2, 10) for _ in range(300)]
  reads_step = [any(left in {s[0] for s in p.steps[:i]} for i, (_, left, _, _) in enumerate(p.steps))
                for p in problems]
  assert np.mean(reads_step) > 0.7


@pytest.mark.parametrize("size", [6, 9])
def test_sudoku_grids_and_scoring(size):
  rng = np.random.default_rng(size)
  grids = {tuple(random_grid(rng, size)) for _ in range(100)}
  assert len(grids) > 90 and all(is_valid_grid(g, size) for g in grids)
  g = np.asarray(next(iter(grids)))
  swapped = g.copy()
  swapped[[0, 1]] = swapped[[1, 0]]
  assert not is_valid_grid(swapped, size)
  task = Sudoku(size=size, min_blanks=10, max_blanks=10, gen_length=size * size, max_prompt_len=size * size + 2)
  ex = task.sample(rng)
  assert ex.prompt.count(".") == 10 and task.score_one(ex.prompt, ex.answer) == 1.0
  assert task.score_one(ex.prompt, ex.answer[:-1]) == 0.0
  i = ex.prompt.index(".")
  j = next(k for k in range(size * size) if ex.prompt[k] != ".")
  wrong_given = list(ex.answer)
  wrong_given[j] = str(int(ex.answer[j]) % size + 1)
  assert task.score_one(ex.prompt, "".join(wrong_given)) == 0.0
  # A completion that keeps the givens and is valid counts even when it differs from the reference: relabelling
  # two digits keeps validity; with every cell blank, any valid grid counts.
  blank = "." * (size * size) + "="
  other = "".join(str({1: 2, 2: 1}.get(int(c), int(c))) for c in ex.answer)
  assert task.score_one(blank, other) == 1.0 and other != ex.answer and i >= 0


def test_hmm_distance_zero_on_data_and_grows_on_degenerate_samplers():
  task = get_task("hmm128")
  ref = list(reference_samples(128))
  assert distribution_distance(ref, ref)["distance"] == pytest.approx(0.0, abs=1e-12)
  fresh = [e.answer for e in task.examples(256, seed=3)]
  d_data = task.distribution_metrics(fresh)
  assert d_data["distance"] < 0.08 and d_data["invalid"] == 0.0
  repeated = [fresh[0]] * 256  # collapse onto one sample
  mode = ["a" * 128] * 256
  noise = ["".join(np.random.default_rng(i).choice(list("abcdefgh"), 128)) for i in range(256)]
  for degenerate in (repeated, mode, noise):
    assert task.distribution_metrics(degenerate)["distance"] > 5 * d_data["distance"] + 0.2
  assert task.distribution_metrics(["?" * 128] * 4)["invalid"] == 1.0


def test_aup_hand_computed():
  # d3LLM's leaderboard: Fast-dLLM-LLaDA on GSM8K-CoT, y_max = 74.98 (D2F's TPF-1 accuracy).
  w = lambda y: min(math.exp(-3 * (1 - y / 74.98)), 1)
  expected = 1.0 * 74.79 + 0.5 * (2.77 - 1.0) * (74.68 * w(74.68) + 74.79 * w(74.79))
  assert aup([2.77, 1.0], [74.68, 74.79], 74.98) == (pytest.approx(expected), 0)
  assert quality_weight(80, 80) == 1.0 and quality_weight(90, 80) == 1.0
  # a point more than 5 below the lowest-TPF accuracy is dropped, the others integrate through it
  value, dropped = aup([1, 2, 3, 4], [80, 70, 79, 78], 80)
  kept = 80 + 0.5 * 2 * (79 * w80(79) + 80) + 0.5 * 1 * (78 * w80(78) + 79 * w80(79))
  assert dropped == 1 and value == pytest.approx(kept)
  with pytest.raises(ValueError, match="strict"):
    aup([1, 2], [80, 70], 80, strict=True)
  with pytest.raises(ValueError, match="positive"):
    aup([0, 1], [1, 1], 1)


def w80(y):
  return min(math.exp(-3 * (1 - y / 80)), 1)


def test_aup_table_per_family_with_task_wide_y_max():
  rec = lambda task, fam, tpf, score: {"task": task, "family": fam, "tpf": tpf, "score": score,
                                       "accuracy_scored": task != "hmm"}
  records = [rec("chain", "LowConfidence", 1.0, 0.9), rec("chain", "LowConfidence", 4.0, 0.5),
             rec("chain", "Threshold", 1.0, 0.95), rec("chain", "Threshold", 3.0, 0.94),
             rec("hmm", "Random", 1.0, -1.6)]
  rows = {(r["task"], r["family"]): r for r in aup_table(records)}
  assert set(rows) == {("chain", "LowConfidence"), ("chain", "Threshold")}
  assert rows[("chain", "LowConfidence")]["aup"] == pytest.approx(90.0) and rows[("chain", "LowConfidence")][
      "dropped"] == 1
  assert rows[("chain", "Threshold")]["y_max"] == 95.0


def test_recipe_variants_and_errors():
  cfg = TrainConfig(model={}, tasks={"chain": {"batch": 4},
                                     "chain128": {"task": "chain", "name": "chain128", "gen_length": 128}})
  (t1, _, b1), (t2, w2, b2) = cfg.task_objects()
  assert (t1.gen_length, b1, t2.gen_length, t2.name, b2, w2) == (256, 4, 128, "chain128", 64, 1.0)
  with pytest.raises(ValueError, match="unknown task 'nope'.*'long'"):
    TrainConfig(model={}, tasks={"long": {"task": "nope"}})
  with pytest.raises(ValueError, match="tasks.chain.batch=0"):
    TrainConfig(model={}, tasks={"chain": {"batch": 0}})


def test_grid_entries_with_tasks_and_engine_options(tmp_path):
  path = tmp_path / "g.yaml"
  path.write_text("- {sampler: threshold, tau: 0.9, cache: dual, stop_at_eos: true, tasks: [chain128]}\n"
                  "- {sampler: low_confidence, steps: G}\n")
  grid = load_grid(path)
  assert grid[0].engine == (("cache", "dual"), ("stop_at_eos", True)) and grid[0].settings == (("tau", 0.9),)
  assert grid[0].runs_on("chain128") and not grid[0].runs_on("add") and grid[1].runs_on("add")
  check_grid(grid)
  for bad, match in [("cache: nope", "cache='nope'"), ("stop_at_eos: 3", "stop_at_eos=3"),
                     ("tasks: [nope]", "unknown task 'nope'"), ("block_length: 0", "block_length=0")]:
    path.write_text(f"- {{sampler: threshold, {bad}}}\n")
    with pytest.raises(ValueError, match=re.escape(match)):
      check_grid(load_grid(path))


@pytest.fixture(scope="module")
def long_model():
  return init_model(tiny_llada(vocab_size=TOKENIZER.vocab_size, mask_id=TOKENIZER.mask_id,
                               eos_id=TOKENIZER.eos_id, max_len=400), seed=0)


def test_compare_runs_the_long_tasks_at_tiny_n(long_model):
  grid = [GridEntry("low_confidence", (("steps", "G/8"),)),
          GridEntry("threshold", (("tau", 0.9),), (("cache", "dual"), ("stop_at_eos", True)), ("chain",))]
  records = compare(long_model, grid, ["chain", "sudoku", "hmm128"], n=2, batch=2, progress=False)
  by = {(r["task"], r["sampler"]): r for r in records}
  assert set(by) == {("chain", "low_confidence"), ("chain", "threshold"), ("sudoku", "low_confidence"),
                     ("hmm128", "low_confidence")}
  assert by[("chain", "low_confidence")]["block_length"] == 32  # the task's own block
  assert by[("chain", "low_confidence")]["nfe_mean"] == 32
  assert by[("chain", "threshold")]["cache"] == "dual" and by[("chain", "threshold")]["stop_at_eos"]
  assert by[("sudoku", "low_confidence")]["block_length"] == 81
  assert by[("hmm128", "low_confidence")]["distribution"]["distance"] > 0


def test_compare_refuses_tasks_beyond_the_models_vocabulary():
  small = init_model(tiny_llada(vocab_size=48, mask_id=1, eos_id=2, max_len=200), seed=0)
  with pytest.raises(ValueError, match="task 'chain128' uses token ids up to .* testbed"):
    compare(small, [GridEntry("low_confidence", (("steps", "G"),))], ["chain128"], n=2, batch=2, progress=False)


def test_testbed_tasks_registered():
  assert {"chain", "chain128", "sudoku", "sudoku6", "hmm128"} <= set(TASKS)
  assert isinstance(get_task("hmm128"), HMM) and get_task("hmm128").tag == "hmm"


def test_shipped_testbed_model_reads_the_long_tasks():
  from dlm.io.shipped import SHIPPED_MODELS as BUNDLED_MODELS
  from dlm.io.params import load_model
  folder = BUNDLED_MODELS["testbed"]
  assert (folder / "params.safetensors").stat().st_size <= 25 * 2**20
  model = load_model(folder)
  assert model.cfg.vocab_size == TOKENIZER.vocab_size
  grid = [GridEntry("threshold", (("tau", 0.9),))]
  records = compare(model, grid, ["chain128", "sudoku6"], n=4, batch=4, progress=False)
  assert [r["task"] for r in records] == ["chain128", "sudoku6"]
  assert all(1 <= r["nfe_mean"] <= r["gen_length"] for r in records)


def test_shipped_block_diffusion_testbed_model_reads_the_long_tasks():
  """testbed_bd: the testbed's shape with block-causal attention; compare decodes its blocks of 8."""
  from dlm.io.shipped import SHIPPED_MODELS
  from dlm.io.params import load_model
  folder = SHIPPED_MODELS["testbed_bd"]
  assert (folder / "params.safetensors").stat().st_size <= 25 * 2**20
  model = load_model(folder)
  assert model.cfg.block_causal and model.cfg.block_size == 8 and model.cfg.vocab_size == TOKENIZER.vocab_size
  grid = [GridEntry("threshold", (("tau", 0.9),))]
  records = compare(model, grid, ["chain128", "sudoku6"], n=4, batch=4, progress=False)
  assert [r["block_length"] for r in records] == [8, 8]
  assert all(1 <= r["nfe_mean"] <= r["answer_slots"] for r in records)


# hao-ai-lab/d3LLM AUP_leaderboard/data_llada.yaml (snapshot e5bfcac): (TPF, accuracy %) per method, and the AUP
# its main.py prints for them (run on that snapshot; y_max is the task's best accuracy over every method).
LEADERBOARD = {
    "GSM8K-CoT": {"Qwen-2.5-7B-it": ([(1.0, 74.1)], 74.1), "LLaDA": ([(1.0, 72.55)], 72.55),
                  "Fast-dLLM-LLaDA": ([(1.0, 74.79), (2.77, 74.68)], 205.781115),
                  "D2F": ([(1.0, 74.98), (2.88, 74.39)], 213.756423),
                  "dParallel-LLaDA": ([(1.0, 74.0), (5.14, 72.63)], 358.142184),
                  "d3LLM-LLaDA": ([(1.0, 74.02), (9.11, 73.09)], 637.654926)},
    "MATH": {"Qwen-2.5-7B-it": ([(1.0, 41.15)], 41.15), "LLaDA": ([(1.0, 32.2)], 32.2),
             "Fast-dLLM-LLaDA": ([(1.0, 32.1), (1.97, 30.82)], 47.187310),
             "D2F": ([(1.0, 29.1), (2.66, 28.94)], 48.995833),
             "dParallel-LLaDA": ([(1.0, 32.0), (3.17, 30.18)], 64.535612),
             "d3LLM-LLaDA": ([(1.0, 32.76), (5.74, 30.36)], 107.641927)},
}


def test_aup_recomputes_the_leaderboard():
  for task, methods in LEADERBOARD.items():
    y_max = max(y for points, _ in methods.values() for _, y in points)
    for method, (points, expected) in methods.items():
      value, dropped = aup([r for r, _ in points], [y for _, y in points], y_max)
      assert value == pytest.approx(expected, abs=1e-5) and dropped == 0, (task, method)
    # the same through aup_table: every method has its own TPF-1 point, so no anchor is added
    records = [{"task": task, "family": m, "tpf": r, "score": y / 100, "sampler": m, "settings": {}, "gen_length": 256}
               for m, (points, _) in methods.items() for r, y in points]
    for row in aup_table(records):
      assert row["aup"] == pytest.approx(methods[row["family"]][1], abs=1e-4) and not row["anchored"]


def test_aup_anchors_each_family_at_the_one_token_per_step_point():
  def rec(family, sampler, tpf, score, **settings):
    return {"task": "sudoku4_hard", "family": family, "sampler": sampler, "tpf": tpf, "score": score,
            "gen_length": 16, "settings": settings}
  records = [rec("LowConfidence", "low_confidence", 1.0, 0.938, steps=16, temperature=0.0, cfg_scale=0.0),
             rec("LowConfidence", "low_confidence", 4.0, 0.90, steps=4, temperature=0.0, cfg_scale=0.0),
             rec("WINO", "wino", 6.4, 0.562), rec("Threshold", "threshold", 2.0, 0.93)]
  rows = {r["family"]: r for r in aup_table(records)}
  # WINO's one point is far below the anchor (the 5-point filter drops it): the anchor's 93.8 alone, not 6.4 x 56.2
  assert rows["WINO"]["anchored"] and rows["WINO"]["dropped"] == 1
  assert rows["WINO"]["aup"] == pytest.approx(93.8)
  w = lambda y: quality_weight(y, 93.8)  # noqa: E731
  assert rows["Threshold"]["anchored"] and rows["Threshold"]["aup"] == pytest.approx(
      93.8 + 0.5 * (2.0 - 1.0) * (93.0 * w(93.0) + 93.8 * w(93.8)))
  assert not rows["LowConfidence"]["anchored"]  # it holds the anchor itself
  assert "anchored" in format_aup(list(rows.values()))
  no_anchor = aup_table([r for r in records if r["sampler"] != "low_confidence"])
  assert all(r["anchor"] is None and not r["anchored"] for r in no_anchor)
  assert "no one-token-per-step point on sudoku4_hard" in format_aup(no_anchor)


def test_compare_adds_the_anchor_run_where_the_grid_lacks_it():
  from dlm.eval.compare import GridEntry
  grid = [GridEntry("threshold", (("tau", 0.9),)),
          GridEntry("low_confidence", (("steps", "G"),), tasks=("sudoku4",))]
  out, added = anchor_entries(grid, ["sudoku4", "add", "hmm"])
  assert added == ["add"]  # sudoku4 has it; hmm is scored by likelihood, not accuracy
  assert out[-1] == GridEntry("low_confidence", (("steps", "G"),), tasks=("add",)) and out[:2] == grid
  assert anchor_entries(out, ["sudoku4", "add", "hmm"]) == (out, [])
