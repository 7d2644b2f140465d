"""The `dlm` command: one module per subcommand (each with `add_parser(sub)` and its `cmd_*` function) and
dlm.cli.common for the argument types, settings parsing and one-line errors they share.  Nothing else in dlm
imports this package: the library's model loading is dlm.io.shipped / `dlm.load`."""

from __future__ import annotations

import sys

from dlm.cli import (bench, collect, compare, convert, eval, launch, lm_eval, run, sample, token_freq,  # noqa: A004
                     train, train_head)
from dlm.cli.common import _Parser, packaged_config, run_main
from dlm.io.shipped import SHIPPED_MODELS as BUNDLED_MODELS  # the name the CLI has always exported

# The order of `dlm --help`.
SUBCOMMANDS = (train, compare, collect, train_head, eval, lm_eval, run, sample, bench, launch, convert, token_freq)

__all__ = ["BUNDLED_MODELS", "main", "packaged_config"]


def build_parser() -> _Parser:
  parser = _Parser(prog="dlm", description="Sampling from masked diffusion language models")
  parser.add_argument("--debug", action="store_true", help="show full tracebacks (also DLM_DEBUG=1)")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  for module in SUBCOMMANDS:
    module.add_parser(sub)
  return parser


def main(argv=None) -> int:
  return run_main(build_parser(), argv)


if __name__ == "__main__":
  sys.exit(main())
