"""Tree-tensor-network Born machine over any rooted tree of the sites (Cheng, Wang, Xiang & Zhang, PRB 99, 155131
(2019); isometric form and truncation as in Shi, Duan & Vidal, PRA 74, 022320 (2006))."""
from __future__ import annotations

import math
import operator
from typing import Sequence

import torch
from torch import Tensor, nn

from dgrn.tn._common import (BornMachine, abs2, check_dtype, check_finite, check_imag_noise, check_memory, check_size,
                             check_states, check_tolerance, fill_near, sample_categorical, truncation_rank)

__all__ = ["TTN", "balanced_tree", "lattice_tree", "tree_from_labels"]

#: refuse node tensors larger than this many entries (a very wide node: use a deeper tree)
MAX_NODE_ENTRIES = 1 << 26


# ---------------------------------------------------------------------------------------------------- trees
def balanced_tree(sites: int | Sequence[int], arity: int = 2):
    """Balanced tree over ``sites`` (a count or a sequence) as nested lists, splitting into ``arity`` near-equal
    consecutive parts until single sites remain."""
    sites = list(range(sites)) if isinstance(sites, int) else [int(s) for s in sites]
    if not sites:
        raise ValueError("a tree needs at least one site")
    if arity < 2:
        raise ValueError(f"arity must be >= 2, got {arity}")
    if len(sites) == 1:
        return [sites[0]]

    def split(block):
        if len(block) == 1:
            return block[0]
        k = min(arity, len(block))
        bounds = [round(i * len(block) / k) for i in range(k + 1)]
        return [split(block[bounds[i]:bounds[i + 1]]) for i in range(k)]

    return split(sites)


def lattice_tree(lx: int, ly: int | None = None):
    """Binary tree over an ``lx × ly`` lattice (row-major sites, ``site = y * lx + x``): each node halves its
    rectangle across its longer side, so the levels are 2×1, 2×2, 4×2, 4×4, ... blocks (a binary quadtree, the
    real-space RG blocking of the lattice)."""
    ly = lx if ly is None else ly
    if lx < 1 or ly < 1:
        raise ValueError(f"lattice sides must be >= 1, got {lx} x {ly}")

    def split(x0, x1, y0, y1):
        if x1 - x0 == 1 and y1 - y0 == 1:
            return y0 * lx + x0
        if x1 - x0 >= y1 - y0:
            xm = (x0 + x1) // 2
            return [split(x0, xm, y0, y1), split(xm, x1, y0, y1)]
        ym = (y0 + y1) // 2
        return [split(x0, x1, y0, ym), split(x0, x1, ym, y1)]

    out = split(0, lx, 0, ly)
    return out if isinstance(out, list) else [out]


def tree_from_labels(levels: Sequence) -> list:
    """Nested-list tree from an RG hierarchy given as label vectors.

    ``levels[0]`` ``(n,)`` assigns each site to a group of level 1, ``levels[1]`` assigns each level-1 group to a
    level-2 group, and so on (the labels of ``dgrn.renorm.rg_flow`` / community trees). Groups with one member are
    passed through; the root joins the groups of the last level.
    """
    if len(levels) == 0:
        raise ValueError("need at least one level of labels")
    nodes: list = None
    for depth, labels in enumerate(levels):
        lab = torch.as_tensor(labels).long().reshape(-1)
        members = list(range(lab.numel())) if nodes is None else nodes
        if nodes is not None and lab.numel() != len(nodes):
            raise ValueError(f"levels[{depth}] has {lab.numel()} labels but level {depth} has {len(nodes)} groups")
        if (lab < 0).any():
            raise ValueError(f"levels[{depth}] contains negative labels")
        groups = []
        for g in torch.unique(lab).tolist():
            idx = (lab == g).nonzero().reshape(-1).tolist()
            groups.append(members[idx[0]] if len(idx) == 1 else [members[i] for i in idx])
        nodes = groups
    return nodes if len(nodes) > 1 or not isinstance(nodes[0], list) else nodes[0]


def _parse_tree(tree, n_sites: int | None) -> tuple[list[list[tuple[bool, int]]], list[int]]:
    """Post-order internal nodes: children as ``(is_site, index)``; and the number of sites below each node."""
    children: list[list[tuple[bool, int]]] = []
    sizes: list[int] = []
    seen: list[int] = []

    def visit(node) -> tuple[bool, int, int]:
        if isinstance(node, (list, tuple)):
            if len(node) == 0:
                raise ValueError("the tree contains an empty node (every internal node needs at least one child)")
            kids = [visit(c) for c in node]
            children.append([(is_site, idx) for is_site, idx, _ in kids])
            sizes.append(sum(size for *_, size in kids))
            return False, len(children) - 1, sizes[-1]
        try:
            if isinstance(node, bool):
                raise TypeError
            site = operator.index(node)  # ints, numpy integers, 0-d integer tensors
        except TypeError:
            raise ValueError(f"tree leaves must be site indices (int), got {node!r}") from None
        seen.append(site)
        return True, site, 1

    root = visit(tree if isinstance(tree, (list, tuple)) else [tree])
    if root[0]:
        raise ValueError("the tree must be a nested list of site indices")
    n = len(seen) if n_sites is None else n_sites
    counts = torch.bincount(torch.tensor(seen).clamp_min(0), minlength=max(n, max(seen) + 1))
    out_of_range = sorted({s for s in seen if s < 0 or s >= n})
    duplicates = (counts > 1).nonzero().reshape(-1).tolist()
    missing = (counts[:n] == 0).nonzero().reshape(-1).tolist()
    if out_of_range or duplicates or missing:
        raise ValueError(f"the tree must cover each of the {n} sites exactly once: "
                         f"out of range {out_of_range[:10]}, repeated {duplicates[:10]}, missing {missing[:10]}")
    return children, sizes


def _apply_on_axis(t: Tensor, m: Tensor, axis: int) -> Tensor:
    """Contract matrix ``m`` (``(..., D', D)``, batch broadcast) with axis ``axis`` of ``t`` (``(batch, ...)``), whose
    size becomes ``D'`` (a QR factor ``r`` is ``D' x D`` with ``D' < D`` when the bond's exact rank is smaller)."""
    moved = t.movedim(axis, 1)
    shape = moved.shape
    out = m @ moved.reshape(shape[0], shape[1], -1)
    return out.reshape(out.shape[0], m.shape[-2], *shape[2:]).movedim(1, axis)


class TTN(BornMachine):
    r"""Tree-tensor-network Born machine over a rooted tree whose leaves are the sites.

    .. math::
        \psi(x) = \text{contraction of } \{T^{(v)}\}_{v \in \text{internal nodes}} \text{ with } e_{x_i}
        \text{ at leaf } i, \qquad p(x) = |\psi(x)|^2 / Z,

    each internal node ``v`` with children ``c_1..c_k`` holding :math:`T^{(v)}` of shape
    ``(D_{c_1}, ..., D_{c_k}, D_v)``; a site child has dimension ``phys_dim``, the root's upward bond is 1 and the
    other bonds are ``min(bond_dim, prod of children dims, phys_dim^(sites outside))``. ``Z`` is contracted bottom-up
    through the norm matrices :math:`M_v[r, r'] = \sum_x \overline{\phi_v(x)[r]}\, \phi_v(x)[r']` of each subtree
    (:math:`\phi_v` its amplitude vector; :math:`M_v = \sum \bar T\, (\otimes_c M_c)\, T`); amplitudes and norm
    matrices are rescaled at every node with the log scales accumulated.

    Complex tensors (``dtype`` complex64/complex128) work as for :class:`~dgrn.tn.MPS`: conjugates in every norm,
    marginal and sampling contraction, real :meth:`log_prob` / :meth:`log_marginal` (float32 / float64), complex
    QR/SVD in :meth:`truncate` and :meth:`sweep`; real part initialized as the real model from the same seed,
    imaginary part ``imag_noise`` times the same random scale (do not train from exactly zero imaginary parts: the
    likelihood is stationary there); :attr:`n_params` counts real parameters; casting to a real dtype is refused.

    Exact sampling walks the tree depth first: the context of a subtree is the density matrix on its upward bond
    from the already-sampled leaves (amplitude vectors) and the unsampled ones (norm matrices), so no gauge is
    needed. :meth:`truncate` brings the tree to isometric form (QR toward the root) and cuts every bond by SVD
    with the center moved next to it, reporting the discarded weight.

    Args:
        n_sites: number of sites ``n``.
        bond_dim: maximal internal bond dimension ``D >= 1``.
        phys_dim: values of each variable ``d``.
        tree: rooted tree as nested lists of site indices (``[[0, 1], [2, [3, 4]]]``); see :func:`balanced_tree`
            (the default, binary), :func:`lattice_tree`, :func:`tree_from_labels`. Each site exactly once.
        init_noise: scale of the random part of the initial tensors (near-uniform start).
        dtype: torch.float32 / float64 (real tensors) or torch.complex64 / complex128; ``None``: torch's default.
        imag_noise: scale of the imaginary part of the initial tensors (complex ``dtype`` only; default 0.1).

    Shapes:
        ``log_prob``: ``(B, n)`` integers in ``{0..d-1}`` -> ``(B,)``; ``sample(B)`` -> ``(B, n)`` long.
    """

    def __init__(self, n_sites: int, bond_dim: int, phys_dim: int = 2, tree=None, *, init_noise: float = 0.3,
                 dtype: torch.dtype | None = None, imag_noise: float | None = None) -> None:
        super().__init__()
        self.n_sites = check_size("n_sites", n_sites)
        self.bond_dim = check_size("bond_dim", bond_dim)
        self.phys_dim = check_size("phys_dim", phys_dim, 2)
        self.init_noise = float(init_noise)
        dtype = check_dtype(dtype)
        self.imag_noise = check_imag_noise(imag_noise, dtype)
        self.tree = balanced_tree(self.n_sites) if tree is None else tree
        self._children, sizes = _parse_tree(self.tree, self.n_sites)
        d, n = self.phys_dim, self.n_sites
        log_dims: list[float] = []
        dims: list[int] = []
        for v, kids in enumerate(self._children):
            log_kids = sum(math.log(d) if is_site else log_dims[idx] for is_site, idx in kids)
            if v == len(self._children) - 1:
                dim = 1
            else:
                caps = [(math.log(self.bond_dim), self.bond_dim), (log_kids, None), ((n - sizes[v]) * math.log(d), None)]
                log_dim, _ = min(caps, key=lambda c: c[0])
                dim = int(round(math.exp(log_dim)))
            dims.append(dim)
            log_dims.append(math.log(dim))
            entries = math.exp(log_kids) * dim
            if entries > MAX_NODE_ENTRIES:
                raise ValueError(f"node {v} with {len(kids)} children would hold {entries:.3g} entries (> {MAX_NODE_ENTRIES}); "
                                 "use a deeper tree with fewer children per node")
        shapes = [tuple(d if is_site else dims[idx] for is_site, idx in kids) + (dims[v],)
                  for v, kids in enumerate(self._children)]
        check_memory("TTN tensors", (sum(math.prod(s) for s in shapes),), dtype, "cpu")
        self.tensors = nn.ParameterList([nn.Parameter(torch.empty(s, dtype=dtype)) for s in shapes])
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------- parameters
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Uniform product state (channel 0 of every bond carries it) plus ``init_noise`` random entries that seed
        the other channels: the initial distribution is close to uniform at any depth. Complex tensors add an
        imaginary part ``imag_noise`` times the same scale (real parts drawn first: the same as the real model's)."""
        mains = []
        for t, kids in zip(self.tensors, self._children):
            main = torch.zeros(t.shape, dtype=t.real.dtype, device=t.device)
            main[tuple(slice(None) if is_site else 0 for is_site, _ in kids) + (0,)] = 1.0
            mains.append(main)
        fill_near(self.tensors, mains, [1.0 / math.sqrt(math.prod(t.shape[:-1])) for t in self.tensors],
                  self.init_noise, self.imag_noise)

    @property
    def bond_dims(self) -> list[int]:
        """Upward bond dimension of every internal node (post-order; the root's is 1)."""
        return [t.shape[-1] for t in self.tensors]



    # ------------------------------------------------------------------------------------------ likelihood
    def _norm_matrices(self) -> tuple[list[Tensor], Tensor]:
        """Trace-normalized norm matrices ``M_v (D_v, D_v)`` of every subtree (Hermitian), and :math:`\\log Z`."""
        mats: list[Tensor] = []
        log_z = self.tensors[0].real.new_zeros(())
        for v, kids in enumerate(self._children):
            t = self.tensors[v]
            tm = t.unsqueeze(0)
            for j, (is_site, idx) in enumerate(kids):
                if not is_site:  # a site's norm matrix is the identity
                    tm = _apply_on_axis(tm, mats[idx], j + 1)
            m = t.reshape(-1, t.shape[-1]).mH @ tm.reshape(-1, t.shape[-1])  # sum conj(T[a,r]) M[a,a'] T[a',r']
            trace = m.diagonal().sum().real
            mats.append(m / trace)
            log_z = log_z + trace.log()
        return mats, log_z

    def log_norm(self) -> Tensor:
        r""":math:`\log Z` (scalar)."""
        return self._norm_matrices()[1]

    def _up_vector(self, v: int, t: Tensor, x: Tensor, vecs: list[Tensor]) -> Tensor:
        """Amplitude vector ``(B, D_v)`` of the subtree of ``v`` (children vectors from ``vecs``)."""
        batch = x.shape[0]
        w = None
        for j, (is_site, idx) in enumerate(self._children[v]):
            if w is None:  # first child: index or multiply the shared tensor
                w = t[x[:, idx]] if is_site else vecs[idx] @ t.reshape(t.shape[0], -1)
                w = w.reshape(batch, -1)
            else:
                w = w.reshape(batch, t.shape[j], -1)
                w = w[torch.arange(batch, device=x.device), x[:, idx]] if is_site else (vecs[idx].unsqueeze(1) @ w).squeeze(1)
        return w.reshape(batch, t.shape[-1])

    def _down_vector(self, v: int, t: Tensor, x: Tensor, vecs: list[Tensor], ctx: Tensor, skip: int | None) -> Tensor:
        """Contract ``t`` with the context ``ctx (B, D_v)`` on its upward bond and every child but ``skip``:
        ``(B, D_skip)``, or the amplitudes ``(B,)`` when ``skip`` is None."""
        batch = x.shape[0]
        dims = list(t.shape[:-1])
        w = (ctx @ t.reshape(-1, t.shape[-1]).T).reshape(batch, *dims)
        order = list(range(len(dims)))
        if skip is not None:
            w = w.movedim(1 + skip, -1)
            order.remove(skip)
        rows = torch.arange(batch, device=x.device)
        for j in order:
            is_site, idx = self._children[v][j]
            w = w.reshape(batch, dims[j], -1)
            w = w[rows, x[:, idx]] if is_site else (vecs[idx].unsqueeze(1) @ w).squeeze(1)
        return w.reshape(batch, -1) if skip is not None else w.reshape(batch)

    def log_amplitude_sq(self, x: Tensor) -> Tensor:
        r""":math:`\log|\psi(x)|^2` for validated configurations ``(B, n)`` long: ``(B,)`` real."""
        vecs: list[Tensor] = []
        logs = []
        for v in range(len(self._children)):
            w = self._up_vector(v, self.tensors[v], x, vecs)
            norm = w.norm(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
            vecs.append(w / norm)
            logs.append(norm.squeeze(1).log())
        return 2.0 * torch.stack(logs, 1).sum(1)


    def log_marginal(self, x, sites) -> Tensor:
        r"""Exact :math:`\log p(x_S)` of the variables on ``sites`` (other columns ignored): ``(B,)``.

        Bottom-up norm contraction with a projector :math:`e_{x_i}e_{x_i}^\top` at observed leaves and the identity
        at the others (per-sample matrices; the tensor conjugated on one side when complex).
        """
        x = check_states(x, self.n_sites, self.phys_dim, self.tensors[0].device)
        sites = torch.as_tensor(sites).long().reshape(-1)
        if ((sites < 0) | (sites >= self.n_sites)).any():
            raise ValueError(f"sites must lie in [0, {self.n_sites}), got {sites.tolist()}")
        observed = set(sites.tolist())
        mats, log_z = self._norm_matrices()
        check_finite(self, log_z, "TTN")
        proj = torch.eye(self.phys_dim, dtype=self.tensors[0].dtype, device=x.device)[x]  # (B, n, d) one-hot
        sub: list[Tensor] = []
        log_m = proj.real.new_zeros(x.shape[0])
        for v, kids in enumerate(self._children):
            t = self.tensors[v]
            tm = t.unsqueeze(0)
            for j, (is_site, idx) in enumerate(kids):
                if is_site and idx in observed:
                    tm = _apply_on_axis(tm, proj[:, idx, :, None] * proj[:, idx, None, :], j + 1)
                elif not is_site:
                    tm = _apply_on_axis(tm, sub[idx], j + 1)
            m = t.reshape(-1, t.shape[-1]).mH @ tm.reshape(tm.shape[0], -1, t.shape[-1])
            trace = m.diagonal(dim1=1, dim2=2).sum(1).real
            sub.append(m / trace[:, None, None])
            log_m = log_m + trace.log()
        return log_m - log_z

    # ------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent exact samples ``(n, n_sites)`` long (depth-first, vectorized over samples)."""
        n = check_size("n", n)
        mats, _ = self._norm_matrices()
        ref = self.tensors[0]
        out = torch.empty(n, self.n_sites, dtype=torch.long, device=ref.device)
        eye = torch.eye(self.phys_dim, dtype=ref.dtype, device=ref.device)
        root = len(self._children) - 1
        self._sample_node(root, torch.ones(n, 1, 1, dtype=ref.dtype, device=ref.device), mats, out, eye, generator)
        return out

    def _sample_node(self, v: int, rho: Tensor, mats, out: Tensor, eye: Tensor, generator) -> Tensor:
        """Sample the leaves below ``v`` given the context ``rho (B, D_v, D_v)``; return their amplitude vectors."""
        t = self.tensors[v].detach()
        kids = self._children[v]
        batch = rho.shape[0]
        dims = list(t.shape[:-1])
        w = t.unsqueeze(0)  # (1 or B, D_j, ..., D_k, D_v): the children not yet sampled stay open
        for j, (is_site, idx) in enumerate(kids):
            rest = dims[j + 1:]
            wm = w.reshape(w.shape[0], dims[j], math.prod(rest), t.shape[-1])
            y = wm @ rho.unsqueeze(1)  # context on the upward bond
            later = [(mats[c] if not s else None, dj) for (s, c), dj in zip(kids[j + 1:], rest)]
            if any(m is not None for m, _ in later):  # unsampled later siblings: their norm matrices
                kron = torch.ones(1, 1, dtype=t.dtype, device=t.device)
                for m, dj in later:
                    kron = torch.kron(kron, m if m is not None else torch.eye(dj, dtype=t.dtype, device=t.device))
                y = torch.einsum("rs,bjsp->bjrp", kron, y)
            # rho[j, k] = sum over the rest of amp(j) conj(amp(k)): the second copy conjugated
            ctx = torch.einsum("bjrp,bkrp->bjk", y, wm.conj().expand(batch, -1, -1, -1))
            ctx = ctx / ctx.diagonal(dim1=1, dim2=2).sum(1).real[:, None, None]
            if is_site:
                out[:, idx] = sample_categorical(ctx.diagonal(dim1=1, dim2=2).real.clamp_min(0), generator)
                vec = eye[out[:, idx]]
            else:
                vec = self._sample_node(idx, ctx, mats, out, eye, generator)
            w = (vec.unsqueeze(1) @ wm.expand(batch, -1, -1, -1).reshape(batch, dims[j], -1)).reshape(batch, *rest, t.shape[-1])
        w = w.reshape(batch, t.shape[-1])
        return w / w.norm(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)

    # ---------------------------------------------------------------------------------- isometric form
    def _isometric(self) -> list[Tensor]:
        """Copy in isometric form toward the root (each node an isometry from its children to its bond; the root
        holds the unit norm). Bonds may shrink to exact ranks."""
        tensors = [t.detach().clone() for t in self.tensors]
        parent = {}
        for v, kids in enumerate(self._children):
            for j, (is_site, idx) in enumerate(kids):
                if not is_site:
                    parent[idx] = (v, j)
        for v in range(len(tensors) - 1):
            t = tensors[v]
            q, r = torch.linalg.qr(t.reshape(-1, t.shape[-1]))
            tensors[v] = q.reshape(*t.shape[:-1], q.shape[1])
            p, j = parent[v]
            tensors[p] = _apply_on_axis(tensors[p].unsqueeze(0), r, j + 1).squeeze(0)
            tensors[p] = tensors[p] / tensors[p].norm()
        tensors[-1] = tensors[-1] / tensors[-1].norm()
        return tensors

    @torch.no_grad()
    def canonicalize(self) -> "TTN":
        """Bring the tree in place to isometric form toward the root with unit norm (same distribution)."""
        self._set_tensors(self._isometric())
        return self

    @torch.no_grad()
    def truncate(self, tol: float, max_bond: int | None = None) -> dict:
        r"""Compress every internal bond by SVD at the discarded-weight tolerance ``tol`` (``max_bond`` caps it).

        The isometric center walks the tree depth first; at each bond the singular values of the center tensor are
        the Schmidt coefficients of the normalized state across that bond, so the discarded weight
        :math:`\epsilon_b` is the local truncation error (:math:`\|\psi-\tilde\psi\|^2 \le 2\sum_b\epsilon_b`).

        Returns:
            dict with ``discarded`` (per internal bond, post-order), ``total_discarded``,
            ``bond_dims_before``/``after``, ``n_params_before``/``after``.
        """
        check_tolerance(tol, max_bond)
        before, params_before = self.bond_dims, self.n_params
        tensors = self._isometric()
        discarded = [0.0] * (len(tensors) - 1)

        def descend(v: int) -> None:  # v holds the center
            for j, (is_site, c) in enumerate(self._children[v]):
                if is_site:
                    continue
                tv = tensors[v]
                mat = tv.movedim(j, 0)
                u, s, vh = torch.linalg.svd(mat.reshape(mat.shape[0], -1), full_matrices=False)
                k, eps = truncation_rank(s, tol, max_bond)
                discarded[c] = eps
                tensors[v] = vh[:k].reshape(k, *mat.shape[1:]).movedim(0, j)
                child = tensors[c] @ (u[:, :k] * s[:k])
                tensors[c] = child / child.norm()
                descend(c)
                q, r = torch.linalg.qr(tensors[c].reshape(-1, tensors[c].shape[-1]))
                tensors[c] = q.reshape(*tensors[c].shape[:-1], q.shape[1])
                tensors[v] = _apply_on_axis(tensors[v].unsqueeze(0), r, j + 1).squeeze(0)

        descend(len(tensors) - 1)
        self._set_tensors(tensors)
        return {"discarded": discarded, "total_discarded": float(sum(discarded)), "bond_dims_before": before,
                "bond_dims_after": self.bond_dims, "n_params_before": params_before, "n_params_after": self.n_params}

    def sweep(self, x, lr: float = 0.1, *, n_steps: int = 10) -> dict:
        r"""One depth-first sweep of single-node updates maximizing the likelihood of ``x`` (bond dimensions fixed).

        The isometric center visits every internal node; there :math:`Z = \|T^{(v)}\|^2` and the NLL
        :math:`\log\|T^{(v)}\|^2 - \frac{1}{|T|}\sum_x \log|\psi_x(T^{(v)})|^2` depends on :math:`T^{(v)}` through
        per-sample environment vectors (children from below, the rest of the tree from above), so ``n_steps``
        gradient steps with backtracking (initial size ``lr``) never raise it. The center moves between nodes by QR.
        Replaces the parameters: rebuild any optimizer afterwards.

        Returns:
            dict with ``nll`` (mean NLL of ``x`` after the sweep, nats per configuration).
        """
        x = check_states(x, self.n_sites, self.phys_dim, self.tensors[0].device)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        tiny = torch.finfo(self.tensors[0].dtype).tiny
        with torch.no_grad():
            tensors = self._isometric()
            vecs: list[Tensor] = []
            for v in range(len(tensors)):
                w = self._up_vector(v, tensors[v], x, vecs)
                vecs.append(w / w.norm(dim=1, keepdim=True).clamp_min(tiny))

        def optimize(v: int, ctx: Tensor) -> None:
            def nll(t: Tensor) -> Tensor:
                psi = self._down_vector(v, t, x, vecs, ctx, None)
                return abs2(t).sum().log() - abs2(psi).clamp_min(tiny).log().mean()

            t, step = tensors[v] / tensors[v].norm(), lr
            for _ in range(int(n_steps)):
                t.requires_grad_(True)
                with torch.enable_grad():
                    loss = nll(t)
                    (grad,) = torch.autograd.grad(loss, t)
                t = t.detach()
                if not bool(torch.isfinite(loss)) or not bool(torch.isfinite(grad).all()):
                    raise FloatingPointError(f"TTN sweep diverged at node {v} (NLL {float(loss)})")
                with torch.no_grad():
                    for _ in range(20):  # backtracking: an update never raises the NLL
                        trial = t - step * grad
                        trial = trial / trial.norm()
                        if nll(trial) <= loss:
                            t, step = trial, step * 1.5
                            break
                        step = step / 2
            tensors[v] = t

        @torch.no_grad()
        def visit(v: int, ctx: Tensor) -> None:  # v holds the center
            optimize(v, ctx)
            for j, (is_site, c) in enumerate(self._children[v]):
                if is_site:
                    continue
                moved = tensors[v].movedim(j, -1)
                q, r = torch.linalg.qr(moved.reshape(-1, moved.shape[-1]))
                tensors[v] = q.reshape(*moved.shape[:-1], q.shape[1]).movedim(-1, j)
                tensors[c] = tensors[c] @ r.T
                down = self._down_vector(v, tensors[v], x, vecs, ctx, j)
                visit(c, down / down.norm(dim=1, keepdim=True).clamp_min(tiny))
                q, r = torch.linalg.qr(tensors[c].reshape(-1, tensors[c].shape[-1]))
                tensors[c] = q.reshape(*tensors[c].shape[:-1], q.shape[1])
                tensors[v] = _apply_on_axis(tensors[v].unsqueeze(0), r, j + 1).squeeze(0)
                up = self._up_vector(c, tensors[c], x, vecs)
                vecs[c] = up / up.norm(dim=1, keepdim=True).clamp_min(tiny)

        root = len(tensors) - 1
        visit(root, tensors[root].new_ones(x.shape[0], 1))
        self._set_tensors(tensors)
        with torch.no_grad():
            nll = -self.log_prob(x).mean()
        return {"nll": float(nll)}

    def extra_repr(self) -> str:
        return (f"n_sites={self.n_sites}, bond_dim={self.bond_dim}, phys_dim={self.phys_dim}, "
                f"n_nodes={len(self._children)}, n_params={self.n_params}"
                + (f", dtype={self.tensors[0].dtype}" if self.is_complex else ""))
