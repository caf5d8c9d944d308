"""Planted-partition graphs with known scales, for tests and benchmarks of the renormalization flow."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["planted_partition", "hierarchical_planted_partition", "direction_planted_partition"]


def _simple_graph(rows: np.ndarray, cols: np.ndarray, n: int, directed: bool) -> sp.csr_array:
    keep = rows != cols
    a = sp.coo_array((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(n, n)).tocsr()
    if not directed:
        a = (a + a.T).tocsr()
    a.data[:] = 1.0  # duplicates collapse to one unit-weight edge
    return a


def hierarchical_planted_partition(n: int, groups: int, blocks_per_group: int, k_block: float, k_group: float,
                                   k_out: float, seed: int = 0) -> tuple[sp.csr_array, np.ndarray, np.ndarray]:
    """Undirected two-level planted partition: ``groups`` groups of ``blocks_per_group`` equal blocks.

    Each node has on average ``k_block`` neighbours in its block, ``k_group`` in the other blocks of its group and
    ``k_out`` outside its group. Returns ``(A, block_labels, group_labels)``; A is a CSR array of unit weights.
    """
    n_blocks = groups * blocks_per_group
    if n % n_blocks:
        raise ValueError(f"n = {n} is not a multiple of the {n_blocks} blocks")
    rng = np.random.default_rng(seed)
    size = n // n_blocks
    block = np.repeat(np.arange(n_blocks), size)
    group = block // blocks_per_group
    rows, cols = [], []
    # endpoints: a uniform node, then a uniform partner in the chosen relation (edge counts give the mean degrees)
    m = int(round(n * k_block / 2))
    i = rng.integers(0, n, m)
    rows.append(i), cols.append(block[i] * size + rng.integers(0, size, m))
    if blocks_per_group > 1 and k_group > 0:
        m = int(round(n * k_group / 2))
        i = rng.integers(0, n, m)
        other = (block[i] % blocks_per_group + rng.integers(1, blocks_per_group, m)) % blocks_per_group
        rows.append(i), cols.append((group[i] * blocks_per_group + other) * size + rng.integers(0, size, m))
    if groups > 1 and k_out > 0:
        m = int(round(n * k_out / 2))
        i = rng.integers(0, n, m)
        other = (group[i] + rng.integers(1, groups, m)) % groups
        gsize = size * blocks_per_group
        rows.append(i), cols.append(other * gsize + rng.integers(0, gsize, m))
    return _simple_graph(np.concatenate(rows), np.concatenate(cols), n, False), block, group


def planted_partition(n: int, blocks: int, k_in: float, k_out: float, seed: int = 0
                      ) -> tuple[sp.csr_array, np.ndarray]:
    """Undirected planted partition: ``blocks`` equal blocks, mean degree ``k_in`` inside and ``k_out`` outside."""
    a, labels, _ = hierarchical_planted_partition(n, blocks, 1, k_in, 0.0, k_out, seed)
    return a, labels


def direction_planted_partition(n: int, blocks: int, k: float, seed: int = 0) -> tuple[sp.csr_array, np.ndarray]:
    """Directed planted partition whose blocks exist only in the edge directions.

    The undirected skeleton is an Erdos-Renyi graph of mean degree ``k`` (no block structure, weighted or not, after
    symmetrization); each edge gets one direction: random inside a block, from the lower-indexed block to the higher
    one between blocks (a feed-forward chain of blocks). Returns ``(A, labels)``, ``A[i, j] = 1`` for ``i -> j``.
    """
    if n % blocks:
        raise ValueError(f"n = {n} is not a multiple of the {blocks} blocks")
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(blocks), n // blocks)
    skeleton = sp.triu(_simple_graph(rng.integers(0, n, int(n * k / 2)), rng.integers(0, n, int(n * k / 2)), n,
                                     False), k=1).tocoo()
    i, j = skeleton.row, skeleton.col
    forward = np.where(labels[i] == labels[j], rng.random(i.size) < 0.5, labels[i] < labels[j])
    src, dst = np.where(forward, i, j), np.where(forward, j, i)
    return sp.coo_array((np.ones(src.size), (src, dst)), shape=(n, n)).tocsr(), labels
