"""Built-in verifiable tasks (DESIGN.md §4): generators, the shared tokenizer, scorers."""

from dlm.tasks.arithmetic import Add, Reverse
from dlm.tasks.base import TOKENIZER, Example, Task
from dlm.tasks.hmm import HMM
from dlm.tasks.sudoku import Sudoku4
from dlm.tasks.tokenizer import CharTokenizer

TASKS: dict[str, Task] = {
    "add": Add(),
    "sudoku4": Sudoku4(),
    "reverse": Reverse(),
    "hmm": HMM(),
    # 10 blanks: more cells are coupled only through other blanks, where independent parallel commits clash.
    "sudoku4_hard": Sudoku4(min_blanks=10, max_blanks=10, name="sudoku4_hard"),
}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
  return TASKS[name]


__all__ = ["Add", "CharTokenizer", "Example", "HMM", "Reverse", "Sudoku4", "TASKS", "TOKENIZER", "Task", "get_task"]
