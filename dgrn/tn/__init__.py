"""Tensor-network Born machines: exactly normalized, exactly sampled, log-domain stable, truncatable.

* :class:`MPS`: matrix product state over a chain of sites.
* :class:`TTN`: tree tensor network over any rooted tree of the sites (an RG hierarchy, a community tree).
* :class:`MERA`: binary multiscale entanglement renormalization ansatz with an exact likelihood from its full
  state vector (24 binary sites at most).
* :class:`ConditionalMPS`: :math:`p(x \\mid c)` with context-modulated site tensors (trajectory decoder).
* :class:`SegmentedMPS`: independent conditional MPS on contiguous segments of the sites, scored per segment.
* :mod:`dgrn.tn.readouts`: compression read-outs (parameters against :math:`d^N`, bond profiles, truncation curves).
"""
from dgrn.tn.conditional import ConditionalMPS, SegmentedMPS
from dgrn.tn.mera import MERA
from dgrn.tn.mps import MPS
from dgrn.tn.ttn import TTN, balanced_tree, lattice_tree, tree_from_labels

__all__ = ["ConditionalMPS", "MERA", "MPS", "SegmentedMPS", "TTN", "balanced_tree", "lattice_tree", "tree_from_labels"]
