"""Hugging Face tokenizers for real checkpoints: `tokenizer.json` + `tokenizer_config.json`, chat templates.

`HFTokenizer` wraps a `tokenizers.Tokenizer` (the fast Rust tokenizer that `transformers` also uses) and reads
the special tokens and the Jinja chat template from `tokenizer_config.json` (or `chat_template.jinja`). The
template is rendered in a sandboxed Jinja environment with the helpers templates expect (`raise_exception`,
`strftime_now`, a `tojson` filter), so Instruct prompts are formatted exactly as the model was trained.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model")
_SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")


class ChatTemplateError(ValueError):
  """A chat template that is missing, fails to compile, or rejects the messages (`raise_exception`)."""


def _token_text(value: Any) -> str | None:
  """tokenizer_config stores a special token as a string or as an AddedToken dict {"content": ...}."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, dict) and "content" in value:
    return value["content"]
  raise ValueError(f"unrecognised special-token entry {value!r}")


def _raise_exception(message: str):
  raise ChatTemplateError(f"chat template refused the messages: {message}")


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
  return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


def _environment() -> jinja2.Environment:
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                     extensions=["jinja2.ext.loopcontrols"])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  return env


@dataclasses.dataclass(frozen=True, eq=False)
class HFTokenizer:
  """A Hugging Face tokenizer with its special tokens and chat template."""

  tokenizer: Tokenizer
  special_tokens: dict[str, str | None]  # bos_token, eos_token, pad_token, unk_token, mask_token -> text
  chat_template: str | None = None
  folder: Path | None = None

  @classmethod
  def from_folder(cls, folder: str | os.PathLike) -> "HFTokenizer | None":
    """Read a tokenizer from a Hugging Face model folder; None when the folder has no tokenizer.json."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
      return None
    try:
      tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # the Rust side raises a bare Exception
      raise ValueError(f"{folder / 'tokenizer.json'} could not be read by `tokenizers` ({e})") from e
    config = _read_json(folder / "tokenizer_config.json")
    specials = _read_json(folder / "special_tokens_map.json")
    special_tokens = {k: _token_text(config.get(k, specials.get(k))) for k in _SPECIAL}
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
      named = {t["name"]: t["template"] for t in template}
      template = named.get("default", next(iter(named.values()), None))
    if (folder / "chat_template.jinja").is_file():
      template = (folder / "chat_template.jinja").read_text()
    elif template is None and (folder / "chat_template.json").is_file():
      template = _read_json(folder / "chat_template.json").get("chat_template")
    return cls(tok, special_tokens, template, folder)

  # -- ids --------------------------------------------------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    return self.tokenizer.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self.tokenizer.id_to_token(token_id)

  def _special_id(self, key: str) -> int | None:
    text = self.special_tokens.get(key)
    return None if text is None else self.tokenizer.token_to_id(text)

  @property
  def bos_id(self) -> int | None:
    return self._special_id("bos_token")

  @property
  def eos_id(self) -> int | None:
    return self._special_id("eos_token")

  @property
  def pad_id(self) -> int | None:
    return self._special_id("pad_token")

  @property
  def mask_id(self) -> int | None:
    return self._special_id("mask_token")

  # -- text <-> ids -----------------------------------------------------------------------------------------------

  def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

  def encode_batch(self, texts: list[str], *, add_special_tokens: bool = True) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)]

  def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def decode_batch(self, rows, *, skip_special_tokens: bool = False) -> list[str]:
    return [self.decode(r, skip_special_tokens=skip_special_tokens) for r in rows]

  # -- chat -------------------------------------------------------------------------------------------------------

  def render_chat(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                  chat_template: str | None = None, **kwargs) -> str:
    """Format `messages` ([{"role": ..., "content": ...}]) with the tokenizer's own Jinja chat template."""
    template = chat_template or self.chat_template
    if template is None:
      raise ChatTemplateError(f"{self.folder}: tokenizer_config.json has no chat_template (a Base model?); "
                              f"format the prompt yourself or pass chat_template=")
    try:
      compiled = _environment().from_string(template)
    except jinja2.TemplateError as e:
      raise ChatTemplateError(f"chat template does not compile: {e}") from e
    context = {k: self.special_tokens.get(k) or "" for k in _SPECIAL}
    context.update(kwargs)
    try:
      return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **context)
    except jinja2.TemplateError as e:
      raise ChatTemplateError(f"chat template failed to render: {e}") from e

  def apply_chat_template(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                          tokenize: bool = True, **kwargs) -> list[int] | str:
    """As `transformers`: the rendered prompt's ids (special tokens come from the template itself, so none are
    added), or the text with tokenize=False."""
    text = self.render_chat(messages, add_generation_prompt=add_generation_prompt, **kwargs)
    return self.encode(text, add_special_tokens=False) if tokenize else text


def _read_json(path: Path) -> dict:
  if not path.is_file():
    return {}
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e})") from e
