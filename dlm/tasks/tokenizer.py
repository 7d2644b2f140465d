"""The character-level tokenizer shared by the built-in tasks and the bundled model."""

from __future__ import annotations

import numpy as np

PAD, MASK, EOS = "<pad>", "<mask>", "<eos>"
TASK_TAGS = ("<add>", "<sudoku4>", "<reverse>", "<hmm>")
_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz+=.|"
# Appended for the testbed tasks (`chain`, `sudoku`).  Appending keeps every earlier id, so the small bundled
# model (vocabulary 48) still reads every task it was trained on; ids >= 48 exist only in the testbed model.
TESTBED_TAGS = ("<chain>", "<sudoku>")
_TESTBED_CHARS = "-*#;? "


class CharTokenizer:
  """Special tokens first (pad 0, mask 1, eos 2, task tags), then single characters.

  The vocabulary is padded to a multiple of 8 so that the embedding table has a friendly shape.
  """

  def __init__(self):
    self.itos = [PAD, MASK, EOS, *TASK_TAGS, *_CHARS, "<unused47>", *TESTBED_TAGS, *_TESTBED_CHARS]
    while len(self.itos) % 8:
      self.itos.append(f"<unused{len(self.itos)}>")
    self.stoi = {s: i for i, s in enumerate(self.itos)}
    self.pad_id, self.mask_id, self.eos_id = self.stoi[PAD], self.stoi[MASK], self.stoi[EOS]

  @property
  def vocab_size(self) -> int:
    return len(self.itos)

  def tag_id(self, task_name: str) -> int:
    tag = f"<{task_name}>"
    if tag not in self.stoi:
      raise ValueError(f"{task_name=} has no tag token; known tags are {TASK_TAGS + TESTBED_TAGS}")
    return self.stoi[tag]

  def encode(self, text: str) -> list[int]:
    """Characters to ids.  A special token may be written literally, e.g. "<add>12+3="."""
    ids, i = [], 0
    while i < len(text):
      if text[i] == "<":
        end = text.find(">", i)
        if end > 0 and text[i:end + 1] in self.stoi:
          ids.append(self.stoi[text[i:end + 1]])
          i = end + 1
          continue
      if text[i] not in self.stoi:
        raise ValueError(f"character {text[i]!r} at {i} of {text=} is not in the vocabulary "
                         f"{_CHARS + _TESTBED_CHARS!r}")
      ids.append(self.stoi[text[i]])
      i += 1
    return ids

  def decode(self, ids, *, stop_at_eos: bool = True, skip_special: bool = True) -> str:
    out = []
    for i in np.asarray(ids).tolist():
      if i == self.eos_id and stop_at_eos:
        break
      s = self.itos[i]
      if skip_special and s.startswith("<"):
        s = "?" if i == self.mask_id else ""
      out.append(s)
    return "".join(out)
