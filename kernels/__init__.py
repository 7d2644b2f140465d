"""Pallas kernels, each beside its pure-jnp reference (none shipped yet: see the README's status)."""
