r"""Graph Laplacians for diffusion renormalization, as symmetric positive semi-definite operators.

* ``combinatorial``: :math:`L = D - A_s`, :math:`A_s = (A + A^\top)/2` (the Laplacian of Villegas et al. 2023).
* ``normalized``: :math:`L = I - D^{-1/2} A_s D^{-1/2}` (isolated nodes: :math:`L_{ii} = 0`).
* ``directed``: Chung's directed Laplacian (Chung 2005)

  .. math:: L = I - \tfrac12\big(\Phi^{1/2} \tilde P \Phi^{-1/2} + \Phi^{-1/2} \tilde P^\top \Phi^{1/2}\big),

  with :math:`\tilde P` the random walk :math:`P = D_{out}^{-1} A` and :math:`\Phi = \mathrm{diag}(\phi)` its Perron
  (stationary) vector. A weakly connected component that is not strongly connected gets teleportation:
  :math:`\tilde P = (1-\alpha) P + (\alpha \mathbf 1 + (1-\alpha)\,\mathbf d)\, t^\top` with :math:`t` uniform on the
  component and :math:`\mathbf d` the indicator of dangling (no out-edge) nodes; strongly connected components keep
  :math:`\alpha = 0`, so on symmetric connected input ``directed`` equals ``normalized`` exactly. The teleportation term
  is a rank-two matrix per component and is applied as such: the operator never forms a dense matrix.

Self-loops do not enter any Laplacian. Each Laplacian is block diagonal over the weakly connected components, with one
known zero mode per component (``null_vector``): a disconnected graph is handled component by component.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from dgrn.renorm.graphs import is_symmetric, undirected

__all__ = ["LAPLACIANS", "Laplacian", "laplacian", "perron_vector"]

LAPLACIANS = ("auto", "combinatorial", "normalized", "directed")


class Laplacian:
    """A symmetric PSD Laplacian ``L = sparse - sym(a b^T)`` (the low-rank term block diagonal over components).

    Attributes: ``kind``; ``sparse`` (CSR, symmetric); ``components`` (N,) weak component of each node;
    ``null_vector`` (N,): restricted to each component, the unit-norm zero mode of ``L`` there.
    """

    def __init__(self, kind: str, sparse: sp.csr_array, components: np.ndarray, null_vector: np.ndarray,
                 low_rank: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.kind, self.sparse, self.components, self.null_vector = kind, sparse, components, null_vector
        self.low_rank = low_rank
        self.n_nodes = sparse.shape[0]
        self.n_components = int(components.max()) + 1
        # component indicator (C, N): segment sums over components as one sparse product
        self._member = sp.csr_array((np.ones(self.n_nodes), (components, np.arange(self.n_nodes))),
                                    shape=(self.n_components, self.n_nodes))

    def segment_sum(self, x: np.ndarray) -> np.ndarray:
        """Sum of ``x`` (N,) or (N, m) over each component, broadcast back to the nodes (a read-only view for a
        connected graph)."""
        if self.n_components == 1:  # the common case: a plain column sum, no sparse product
            return np.broadcast_to(x.sum(0), x.shape)
        return self._member.T @ (self._member @ x)

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``L @ x`` for ``x`` of shape (N,) or (N, m)."""
        y = self.sparse @ x
        if self.low_rank is not None:
            a, b = self.low_rank
            if x.ndim == 2:
                a, b = a[:, None], b[:, None]
            y = y - 0.5 * (a * self.segment_sum(b * x) + b * self.segment_sum(a * x))
        return y

    def project_null(self, x: np.ndarray) -> np.ndarray:
        """Remove the zero modes from ``x`` (N,) or (N, m)."""
        z = self.null_vector if x.ndim == 1 else self.null_vector[:, None]
        return x - z * self.segment_sum(z * x)

    def dense(self) -> np.ndarray:
        """``L`` as a dense (N, N) array (exact path only)."""
        out = self.sparse.toarray()
        if self.low_rank is not None:
            a, b = self.low_rank
            same = self.components[:, None] == self.components[None, :]
            out -= 0.5 * np.where(same, np.outer(a, b) + np.outer(b, a), 0.0)
        return out

    def upper_bound(self) -> float:
        """An upper bound on the largest eigenvalue (Gershgorin for the combinatorial kind; 2 otherwise)."""
        if self.kind == "combinatorial":
            return float(2 * self.sparse.diagonal().max()) if self.n_nodes else 0.0
        return 2.0


def _components(a: sp.csr_array) -> np.ndarray:
    _, labels = connected_components(a, directed=True, connection="weak")
    return labels.astype(np.int64)


def _unit_per_component(v: np.ndarray, member: sp.csr_array) -> np.ndarray:
    norms = np.sqrt(member.T @ (member @ (v * v)))
    return v / norms


def perron_vector(a: sp.csr_array, teleport: float = 0.05, components: np.ndarray | None = None,
                  tol: float = 1e-12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Stationary distribution of the random walk on a directed graph, per weakly connected component.

    Returns ``(phi, alpha, dangling)``: ``phi`` (N,) sums to 1 on each component; ``alpha`` (N,) the teleportation used
    at each node (``teleport`` on components that are not strongly connected, else 0); ``dangling`` (N,) bool.
    Solves :math:`(I - \tilde P^\top + t\,\mathbf 1_c^\top)\,\phi = t` (nonsingular), densely for small graphs and by
    GMRES otherwise.
    """
    n = a.shape[0]
    if not 0.0 < teleport < 1.0:
        raise ValueError(f"teleport must lie in (0, 1), got {teleport}")
    comp = _components(a) if components is None else components
    n_comp = int(comp.max()) + 1
    _, strong = connected_components(a, directed=True, connection="strong")
    # a weak component is strongly connected iff all its nodes share one strong component
    strong_min = np.full(n_comp, n, dtype=np.int64)
    strong_max = np.full(n_comp, -1, dtype=np.int64)
    np.minimum.at(strong_min, comp, strong)
    np.maximum.at(strong_max, comp, strong)
    alpha = np.where((strong_min == strong_max)[comp], 0.0, teleport)
    out_deg = np.asarray(a.sum(axis=1)).ravel()
    dangling = out_deg <= 0
    inv = np.where(dangling, 0.0, 1.0 / np.where(dangling, 1.0, out_deg))
    walk = sp.diags_array(inv) @ a  # P0, dangling rows empty
    sizes = np.bincount(comp, minlength=n_comp).astype(np.float64)
    t = 1.0 / sizes[comp]
    u = alpha + (1.0 - alpha) * dangling
    member = sp.csr_array((np.ones(n), (comp, np.arange(n))), shape=(n_comp, n))
    walk_t = walk.T.tocsr()

    def system(x: np.ndarray) -> np.ndarray:  # (I - P~^T + t 1_c^T) x
        seg_u = member.T @ (member @ (u * x))
        seg_1 = member.T @ (member @ x)
        return x - walk_t @ ((1.0 - alpha) * x) - t * seg_u + t * seg_1

    if n <= 2000:
        phi = np.linalg.solve(np.column_stack([system(e) for e in np.eye(n)]), t)
    else:
        from scipy.sparse.linalg import LinearOperator, gmres

        op = LinearOperator((n, n), matvec=system, dtype=np.float64)
        phi, info = gmres(op, t, x0=t.copy(), rtol=tol, atol=0.0, restart=60, maxiter=200)
        if info != 0 or np.linalg.norm(system(phi) - t) > 1e-8 * np.linalg.norm(t):
            raise RuntimeError("the Perron vector of the random walk did not converge; raise `teleport`")
    if (phi < -1e-10 * phi.max()).any():
        raise RuntimeError("the Perron vector came out with negative entries; raise `teleport`")
    phi = np.clip(phi, 1e-300, None)
    phi = phi / (member.T @ (member @ phi))
    return phi, alpha, dangling


def laplacian(a: sp.csr_array, kind: str = "auto", teleport: float = 0.05) -> Laplacian:
    """Build the Laplacian of the adjacency ``a`` (``A[i, j]`` = weight of ``i -> j``).

    ``kind="auto"``: ``combinatorial`` for symmetric input, ``directed`` otherwise. The undirected kinds symmetrize a
    directed graph as ``(A + A^T) / 2``. See the module docstring for the definitions.
    """
    if kind not in LAPLACIANS:
        raise ValueError(f"unknown Laplacian {kind!r}; valid: {list(LAPLACIANS)}")
    n = a.shape[0]
    if kind == "auto":
        kind = "combinatorial" if is_symmetric(a) else "directed"
    comp = _components(a)
    member = sp.csr_array((np.ones(n), (comp, np.arange(n))), shape=(int(comp.max()) + 1, n))
    if kind in ("combinatorial", "normalized"):
        s = undirected(a)
        deg = np.asarray(s.sum(axis=1)).ravel()
        if kind == "combinatorial":
            lap = (sp.diags_array(deg) - s).tocsr()
            null = _unit_per_component(np.ones(n), member)
        else:
            inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
            lap = (sp.diags_array((deg > 0).astype(np.float64)) - sp.diags_array(inv_sqrt) @ s
                   @ sp.diags_array(inv_sqrt)).tocsr()
            null = _unit_per_component(np.where(deg > 0, np.sqrt(deg), 1.0), member)
        return Laplacian(kind, lap, comp, null)
    # directed (Chung)
    a = a.copy()
    a.setdiag(0)
    a.eliminate_zeros()
    phi, alpha, dangling = perron_vector(a, teleport, comp)
    out_deg = np.asarray(a.sum(axis=1)).ravel()
    inv = np.where(dangling, 0.0, (1.0 - alpha) / np.where(dangling, 1.0, out_deg))
    sq = np.sqrt(phi)
    m = sp.diags_array(sq * inv) @ a @ sp.diags_array(1.0 / sq)  # (1 - alpha) Phi^1/2 P0 Phi^-1/2
    lap = (sp.eye_array(n) - 0.5 * (m + m.T)).tocsr()
    sizes = np.bincount(comp).astype(np.float64)
    u = alpha + (1.0 - alpha) * dangling
    low_rank = None
    if u.any():  # teleportation and dangling nodes: + (Phi^1/2 u)(Phi^-1/2 t)^T per component
        low_rank = (sq * u, (1.0 / sizes[comp]) / sq)
    return Laplacian("directed", lap, comp, _unit_per_component(sq, member), low_rank)
