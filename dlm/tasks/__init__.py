"""Built-in verifiable tasks (DESIGN.md §4): generators, the shared tokenizer, scorers."""

from dlm.tasks.arithmetic import Add, Reverse
from dlm.tasks.base import TOKENIZER, Example, Task
from dlm.tasks.chain import Chain
from dlm.tasks.hmm import HMM
from dlm.tasks.sudoku import Sudoku4
from dlm.tasks.sudoku_grid import Sudoku
from dlm.tasks.tokenizer import CharTokenizer

TASKS: dict[str, Task] = {
    "add": Add(),
    "sudoku4": Sudoku4(),
    "reverse": Reverse(),
    "hmm": HMM(),
    # 10 blanks: more cells are coupled only through other blanks, where independent parallel commits clash.
    "sudoku4_hard": Sudoku4(min_blanks=10, max_blanks=10, name="sudoku4_hard"),
    # The testbed (long canvases, blocks of 32, EOS padding, strong joint constraints); the testbed model reads them.
    "chain": Chain(),
    "chain128": Chain(gen_length=128, name="chain128"),
    "sudoku": Sudoku(),
    "sudoku6": Sudoku(size=6, min_blanks=12, max_blanks=12, name="sudoku6", gen_length=36, max_prompt_len=38),
    "hmm128": HMM(length=128, gen_length=128, name="hmm128"),
}
TESTBED_TASKS = ("chain", "chain128", "sudoku", "sudoku6", "hmm128")


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
  return TASKS[name]


__all__ = ["Add", "Chain", "CharTokenizer", "Example", "HMM", "Reverse", "Sudoku", "Sudoku4", "TASKS", "TESTBED_TASKS",
           "TOKENIZER", "Task", "get_task"]
