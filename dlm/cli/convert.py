"""`dlm convert`: Hugging Face folders to dlm's format and back, or to an orbax sharded checkpoint."""

from __future__ import annotations


def add_parser(sub):
  p = sub.add_parser("convert", help="convert between Hugging Face folders and dlm's format")
  from dlm.io import convert
  convert.add_arguments(p)
  p.set_defaults(fn=convert.run)
