"""Experiment grids and training recipes (YAML), shipped as package data `dlm.configs`.

`dlm compare` and `dlm train` read their defaults from here through `dlm.cli.common.packaged_config`, so a wheel install
has them too.  This folder is the editable copy.
"""
