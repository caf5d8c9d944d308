"""Simulators with known ground truth (each returns a :class:`dgrn.data.SpikeData`)."""
from dgrn.sim.ising import (CRITICAL_BETA, chain_couplings, correlation_by_distance, heat_bath_chain,
                            integrated_autocorrelation_time,
                            ising_enumerate, ising_sample_exact, ising_transfer, ising_transfer_sample, kaufman_log_z,
                            ising1d, ising2d, onsager_log_z_per_site, square_lattice_couplings, wolff_sample)
from dgrn.sim.kinetic_ising import kinetic_ising, planted_couplings
from dgrn.sim.graph_families import (cap_input, family_kinetic_ising, family_network, family_recording,
                                     hierarchical_couplings, lfr_couplings)
from dgrn.sim.hidden_drive import hidden_markov_kinetic_ising, hidden_markov_log_likelihood
from dgrn.sim.lif import LIF_PRESETS, clustered_lif, lif_preset, simulate_lif
from dgrn.sim.connectome import connectome_dynamics, load_connectome

__all__ = [
    "kinetic_ising", "planted_couplings", "lfr_couplings", "hierarchical_couplings", "cap_input", "family_network",
    "family_kinetic_ising", "family_recording", "hidden_markov_kinetic_ising", "hidden_markov_log_likelihood",
    "CRITICAL_BETA", "chain_couplings", "square_lattice_couplings", "ising_enumerate", "ising_sample_exact",
    "ising_transfer", "ising_transfer_sample", "kaufman_log_z", "onsager_log_z_per_site", "wolff_sample", "heat_bath_chain",
    "integrated_autocorrelation_time", "correlation_by_distance", "ising1d", "ising2d",
    "LIF_PRESETS", "clustered_lif", "lif_preset", "simulate_lif", "connectome_dynamics", "load_connectome",
]
