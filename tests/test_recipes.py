"""Recipes (configs/recipes/, dlm.eval.recipes): prompts, shots and scores as lm-eval builds them (checked against
lm-eval's own task code on local data), chat prompts against transformers, and every shipped recipe end to end
on a tiny checkpoint of its model's layout with two examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dlm.eval import recipes
from dlm.eval.recipes import BENCHMARKS, build_prompt, fewshot_shots, load_recipe, read_records, score_math

from tests.test_hf_io import write_checkpoint, write_tokenizer

DATA = Path(__file__).parent / "data" / "chain_gsm8k.jsonl"
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_qwen_tokenizer(folder: Path) -> None:
  from tokenizers import Tokenizer, models, pre_tokenizers
  words = ["<unk>", *QWEN_SPECIALS, "def", "return", "x", "Q:", "A:"]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(QWEN_SPECIALS)
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
      "unk_token": "<unk>", "chat_template": QWEN_TEMPLATE}))


@pytest.fixture(scope="module")
def gsm8k_split(tmp_path_factory):
  rows = read_records(str(DATA))
  folder = tmp_path_factory.mktemp("gsm8k")
  for name, part in (("test", rows[:4]), ("train", rows[4:])):
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
  return folder


def lm_eval_contexts(folder: Path, task_yaml: str, n_shot: int, limit: int) -> list[str]:
  """The contexts lm-eval itself builds for the installed task's fields over local files."""
  pytest.importorskip("lm_eval")
  from lm_eval.tasks import TaskManager
  import lm_eval
  spec = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / task_yaml).read_text())
  spec = {k: spec[k] for k in ("doc_to_text", "doc_to_target", "generation_kwargs", "output_type")}
  name = f"local_{task_yaml.split('.')[0].replace('-', '_')}"
  spec |= {"task": name, "dataset_path": "json", "training_split": "train", "fewshot_split": "train",
           "test_split": "test", "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                                                  "higher_is_better": True}],
           "dataset_kwargs": {"data_files": {"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")}}}
  include = folder / name
  include.mkdir(exist_ok=True)
  (include / f"{name}.yaml").write_text(yaml.safe_dump(spec))
  task = TaskManager(include_path=str(include), include_defaults=False).load_task_or_group([name])[name]
  task.set_config(key="num_fewshot", value=n_shot)
  task.set_fewshot_seed(seed=1234)
  task.build_all_requests(limit=limit, rank=0, world_size=1)
  return [inst.args[0] for inst in task.instances]


@pytest.mark.parametrize("task_yaml,bench,n_shot", [("gsm8k.yaml", "gsm8k", 5),
                                                    ("gsm8k-cot-zeroshot.yaml", "gsm8k_cot_zeroshot", 0)])
def test_prompts_and_shots_equal_lm_evals(gsm8k_split, monkeypatch, task_yaml, bench, n_shot):
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  expected = lm_eval_contexts(gsm8k_split, task_yaml, n_shot, limit=4)
  docs, train = read_records(str(gsm8k_split / "test.jsonl")), read_records(str(gsm8k_split / "train.jsonl"))
  shots = fewshot_shots(train, len(docs), n_shot)
  assert [build_prompt(BENCHMARKS[bench], d, s) for d, s in zip(docs, shots)] == expected


def test_filters_and_exact_match_equal_lm_evals():
  pytest.importorskip("lm_eval")
  from lm_eval.api.metrics import exact_match_hf_evaluate
  from lm_eval.filters.extraction import RegexFilter
  completions = ["so 3 + 4 = 7.\n#### 1,234.", "The answer is $56. Then 7 more", "no number here",
                 "#### -12 and later 13", "The answer is 5.5. ok 6"]
  doc = {"answer": "steps\n#### 1234"}
  for bench in (BENCHMARKS["gsm8k"], BENCHMARKS["gsm8k_cot_zeroshot"]):
    for pattern, select, key in ((bench.strict, 0, "strict"), (bench.flexible, -1, "flexible")):
      filtered = RegexFilter(regex_pattern=pattern, group_select=select).apply([[c] for c in completions], None)
      want = exact_match_hf_evaluate([f[0] for f in filtered], [doc["answer"]] * len(completions),
                                     regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"], ignore_case=True,
                                     ignore_punctuation=False)["exact_match"]
      got = sum(score_math(bench, c, doc)[key] for c in completions) / len(completions)
      assert got == pytest.approx(want), (bench.name, key)


def test_chat_prompt_with_an_assistant_prefix_equals_transformers(tmp_path):
  transformers = pytest.importorskip("transformers")
  write_qwen_tokenizer(tmp_path)
  from dlm.io.tokenizer import HFTokenizer
  ours = HFTokenizer.from_folder(tmp_path)
  ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  bench = BENCHMARKS["humaneval_instruct_dream"]
  doc = {"prompt": "def f(x):\n    \"\"\"{braces} stay.\"\"\"\n", "task_id": "t/0", "test": "", "entry_point": "f"}
  messages = [{"role": "user", "content": recipes.render(bench.doc_to_text, doc)},
              {"role": "assistant", "content": recipes.render(bench.gen_prefix, doc)}]
  want = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, continue_final_message=True)
  assert build_prompt(bench, doc, [], tokenizer=ours, chat_template=True) == want
  plain = BENCHMARKS["gsm8k_cot_zeroshot"]
  want = ref.apply_chat_template([{"role": "user", "content": "Q: 2+2?\nA: Let's think step by step."}],
                                 tokenize=False, add_generation_prompt=True)
  assert build_prompt(plain, {"question": "2+2?"}, [], tokenizer=ours, chat_template=True) == want


def test_decode_strip_keeps_text_after_an_end_token(tmp_path):
  """LLaDA's harnesses decode with special tokens, cut at `until`, then drop the special tokens."""
  from dlm.eval.text import TextModel
  from dlm.io.tokenizer import HFTokenizer
  write_tokenizer(tmp_path)
  tok = HFTokenizer.from_folder(tmp_path)

  class Cfg:
    end_ids = (tok.token_to_id("<|eot_id|>"), tok.token_to_id("<|endoftext|>"))

  class Net:
    cfg = Cfg()

  ids = tok.encode("hello <|eot_id|> world <|endoftext|>", add_special_tokens=False)
  assert TextModel(Net(), tok, decode_rule="cut").completion(ids, ()) == "hello"
  assert TextModel(Net(), tok, decode_rule="strip").completion(ids, ()) == "hello world"
  assert TextModel(Net(), tok, decode_rule="strip").completion(ids, ("world",)) == "hello"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tiny")
  write_checkpoint(folder / "llada", "llada", tokenizer=True, max_sequence_length=4096)
  write_checkpoint(folder / "dream", "dream", max_position_embeddings=4096)
  write_qwen_tokenizer(folder / "dream")
  return folder


@pytest.mark.parametrize("name", recipes.shipped_recipes())
def test_every_shipped_recipe_runs_on_a_tiny_checkpoint(name, tiny_models, gsm8k_split, tmp_path, capsys):
  """Each recipe end to end with two examples on a random model of its layout: prompts, canvas, every run."""
  from dlm.cli import main
  recipe = load_recipe(name)
  assert all(run["published"].get("source") for run in recipe["runs"])
  layout = "dream" if recipe["recipe_model"].startswith("Dream-org/") else "llada"
  args = ["run", name, "--out", str(tmp_path / "out"), "--model", str(tiny_models / layout), "--limit", "2"]
  if BENCHMARKS[recipe["benchmark"]].kind == "math":
    args += ["--data-test", str(gsm8k_split / "test.jsonl"), "--data-train", str(gsm8k_split / "train.jsonl")]
  assert main(args) == 0
  printed = capsys.readouterr().out
  summary = json.loads((tmp_path / "out" / "summary.json").read_text())
  assert [s["run"] for s in summary] == [r["name"] for r in recipe["runs"]]
  for s, run in zip(summary, recipe["runs"]):
    assert s["n"] == 2 and 0 <= s["score"] <= 100 and s["nfe_mean"] >= 1
    assert s["published_score"] == run["published"]["score"] and f"{run['published']['score']:.2f}" in printed
  records = [json.loads(x) for x in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
  assert len(records) == 2 * len(summary)
  if recipe["prompt"]["chat_template"]:
    assert all("assistant" in r["prompt"] for r in records)
  assert "not the published setting" in printed


def test_recipe_errors_are_one_line(tmp_path):
  good = yaml.safe_load(recipes.resolve_recipe_path("llada_8b_instruct_gsm8k_cot_d3llm").read_text())
  cases = [({"benchmark": "mmlu"}, "benchmark='mmlu'; expected one of"),
           ({"metric": "pass@1"}, "metric='pass@1'; expected one of ['strict', 'flexible']"),
           ({"n_shot": 3}, "n_shot=3 needs data.train"),
           ({"block_length": 48}, "block_length=48; expected a positive divisor of gen_length=256"),
           ({"runs": [{"sampler": "threshold", "cache": "bogus"}]}, "runs[0].cache='bogus'"),
           ({"runs": [{"sampler": "threshold", "settings": {"bogus": 2}}]}, "runs[0] (threshold)"),
           ({"runs": [{"sampler": "nope"}]}, "runs[0].sampler='nope'"),
           ({"prompt": {"decode": "x"}}, "prompt.decode='x'"),
           ({"colour": 1}, "unknown keys ['colour']")]
  for change, words in cases:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**good, **change}))
    with pytest.raises(ValueError, match=None) as e:
      load_recipe(path)
    assert words in str(e.value) and "\n" not in str(e.value), (change, str(e.value))
  (tmp_path / "broken.yaml").write_text("benchmark: [")
  with pytest.raises(ValueError, match="broken.yaml is not valid YAML"):
    load_recipe(tmp_path / "broken.yaml")
  with pytest.raises(FileNotFoundError, match="no shipped recipe of that name"):
    load_recipe("no_such_recipe")
  with pytest.raises(FileNotFoundError, match="'org/name:path/in/repo' of a hub dataset"):
    read_records("missing.jsonl")

  def never(*args):
    raise AssertionError("the model loaded before the data was read")
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):  # the data fails first, not after a model load
    recipes.run_recipe(load_recipe("llada_8b_instruct_gsm8k_cot_d3llm", data_test="missing.jsonl"), load=never)
