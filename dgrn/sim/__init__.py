"""Simulators with known ground truth (each returns a :class:`dgrn.data.SpikeData`)."""
from dgrn.sim.kinetic_ising import kinetic_ising, planted_couplings

__all__ = ["kinetic_ising", "planted_couplings"]
