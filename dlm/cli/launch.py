"""`dlm launch`: a dlm command as N local processes joined by jax.distributed."""

from __future__ import annotations

import sys


def add_parser(sub):
  p = sub.add_parser("launch", help="run a dlm command as N local processes joined by jax.distributed "
                     "(multi-host on one machine; stops all if one fails)")
  from dlm.parallel import launch
  launch.add_arguments(p)
  p.set_defaults(fn=lambda a: sys.exit(launch.launch(a.argv, processes=a.processes,
                                                     devices_per_process=a.devices_per_process, port=a.port)))
