"""Write notebooks/*.ipynb from the cell sources below (outputs stripped).  Run after editing a cell:
    .venv/bin/python scripts/make_notebooks.py
CI executes both notebooks on the testbed model with DLM_NOTEBOOK_SMALL=1 (tests/test_notebooks.py)."""

from pathlib import Path

import nbformat

INSTALL = """\
# Colab: install dlm from its repository (set DLM_REPO to where you cloned/forked it); locally, skip.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("dlm") is None:
    repo = os.environ.get("DLM_REPO", "https://github.com/dlm-project/dlm")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{repo}"], check=True)
SMALL = os.environ.get("DLM_NOTEBOOK_SMALL") == "1"  # CI runs the notebook with tiny settings"""

COMPARE = [
    ("md", """\
# Comparing dLLM samplers with dlm

Runs a sampler comparison on one of dlm's models, shows the table and the score-vs-NFE frontier, and draws one
generation step by step (which slot was committed at which step).  `MODEL = "testbed"` is the shipped testbed
model (6x6 Sudoku, HMM samples, arithmetic chains); a Hugging Face LLaDA/Dream folder works the same way with
your own prompts (`dlm.load(path)`)."""),
    ("code", INSTALL),
    ("code", """\
import numpy as np
import matplotlib.pyplot as plt
import dlm
MODEL = "testbed"  # or "bundled", a model folder, or a Hugging Face LLaDA/Dream folder
model, _ = dlm.load(MODEL)
name = MODEL
print(name, model.cfg.n_layers, "layers,", model.cfg.d_model, "wide")"""),
    ("md", "## A grid of samplers on 6x6 Sudoku and HMM samples\n`G` is the task's answer length."),
    ("code", """\
from dlm.eval.compare import GridEntry, compare, format_table
from dlm.eval.aup import aup_table, format_aup
grid = [
    GridEntry("low_confidence", (("steps", "G"),)),
    GridEntry("low_confidence", (("steps", "G/4"),)),
    GridEntry("threshold", (("tau", 0.9),)),
    GridEntry("eb", (("gamma", 0.1),)),
]
tasks = ["sudoku6"] if SMALL else ["sudoku6", "hmm"]
records = compare(model, grid, tasks, n=8 if SMALL else 64, batch=8 if SMALL else 64, model_name=name)
print(format_table(records))
print(format_aup(aup_table(records)))"""),
    ("md", "## Score against NFE (the frontier)"),
    ("code", """\
from dlm.eval.plots import frontier_plot
frontier_plot(records, "frontier.png")
from IPython.display import Image, display
display(Image("frontier.png"))"""),
    ("md", """\
## One generation, step by step
`dlm.engine.generate_steps` runs the compiled loop's own step from Python and yields a snapshot after every
iteration (its last one equals `generate`'s result). Each panel is the Sudoku answer after one step of the
threshold rule: blank cells are still masked, and the cells committed by that step are outlined."""),
    ("code", """\
import jax
from dlm.engine import generate_steps
from dlm.samplers import Threshold
from dlm.tasks import get_task
task = get_task("sudoku6")
ex = task.examples(1, seed=3)
prompts, valid, _ = task.encode(ex)
snaps = list(generate_steps(model, prompts, valid, sampler=Threshold(tau=0.9), gen_length=task.gen_length))
out = snaps[-1].generation
text = task.decode(np.asarray(out.answers)[0])
print("answer:", text, "| NFE", int(out.nfe[0]), "| score", task.score(ex, np.asarray(out.answers))[0])
mask = model.cfg.mask_id
fig, axes = plt.subplots(1, len(snaps), figsize=(2 * len(snaps), 2.3), squeeze=False)
for ax, snap in zip(axes[0], snaps):
    answer, steps = snap.answers[0], snap.commit_step[0]
    ax.imshow((answer != mask).reshape(6, 6), cmap="Greys", vmin=0, vmax=3)
    for k in range(36):
        i, j = divmod(k, 6)
        if answer[k] != mask:
            new = steps[k] == snap.iteration - 1
            ax.text(j, i, task.decode(answer[k:k + 1]) or "?", ha="center", va="center", fontsize=8,
                    color="tab:red" if new else "k", fontweight="bold" if new else "normal")
    ax.set_title(f"step {snap.iteration}, NFE {int(snap.nfe[0])}", fontsize=8)
    ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout()
plt.show()"""),
]

HEADS = [
    ("md", """\
# Training small heads on a frozen dLLM

Two learned samplers, both trained on the testbed model's own decoding, with optax and orbax (resumable):
- **ADJUST**'s sampler layer: one transformer layer that updates every slot's prediction after each commit, so
  k tokens per full forward approximate k sequential steps;
- **Learn2PD**'s filter: a small MLP from the block's confidences to "commit this slot now"."""),
    ("code", INSTALL),
    ("code", """\
import tempfile
from pathlib import Path
import dlm
from dlm.tasks import get_task
model, _ = dlm.load("testbed")
name = "testbed"
work = Path(tempfile.mkdtemp())
task = get_task("sudoku6")"""),
    ("md", "## ADJUST: record one-token-per-step trajectories, train the layer"),
    ("code", """\
from dlm.heads.joint import collect_joint_data, train_joint
store = collect_joint_data(model, task, work / "traj", n=16 if SMALL else 1024, batch=16 if SMALL else 128,
                           model_name=name)
info = train_joint(work / "traj", work / "joint", model, model_name=name, steps=20 if SMALL else 2000,
                   batch=16 if SMALL else 64)
for k, m in info["metrics"]["held_out"].items():
    print(f"unroll {k}: KL layer {m['kl']:.4f} vs marginals {m['naive_kl']:.4f}")"""),
    ("code", """\
from dlm.eval.compare import GridEntry, compare, format_table
grid = [GridEntry("adjust", (("schedule", "even"), ("temperature", 0.0), ("tokens_per_step", 1),
                             ("use_marginals", True))),
        GridEntry("adjust", (("temperature", 0.0), ("tokens_per_step", 4), ("use_marginals", True))),
        GridEntry("adjust", (("head", str(work / "joint")), ("temperature", 0.0), ("tokens_per_step", 4)))]
records = compare(model, grid, ["sudoku6"], n=8 if SMALL else 256, batch=8 if SMALL else 128, model_name=name)
print(format_table(records))"""),
    ("md", "## Learn2PD: the EGP replay, then the filter"),
    ("code", """\
from dlm.heads.filter import collect_filter_data, train_filter
collect_filter_data(model, task, work / "egp", n=16 if SMALL else 512, batch=16 if SMALL else 64, model_name=name)
f = train_filter(work / "egp", work / "filter", steps=50 if SMALL else 3000)
print("held-out false-positive rate at tau 0.96:", round(f["metrics"]["held_fpr_at_tau"], 3))
records = compare(model, [GridEntry("learn2pd", (("head", str(work / "filter")), ("tau", 0.9)))], ["sudoku6"],
                  n=8 if SMALL else 64, batch=8 if SMALL else 64, model_name=name)
print(format_table(records))"""),
]


def write(path: Path, cells) -> None:
  nb = nbformat.v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nb.metadata["colab"] = {"provenance": []}
  nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
              for kind, src in cells]
  path.parent.mkdir(parents=True, exist_ok=True)
  nbformat.write(nb, str(path))


if __name__ == "__main__":
  root = Path(__file__).resolve().parents[1] / "notebooks"
  write(root / "compare_samplers.ipynb", COMPARE)
  write(root / "train_heads.ipynb", HEADS)
  print("wrote", root)
