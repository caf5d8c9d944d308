"""Hidden Markov model of the population: metastable states, each with its own firing probabilities."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgrn.nn import _kernels
from dgrn.nn.glm import _check_sample_window, _check_window
from dgrn.nn.rolling import RollingWindow
from dgrn.tn._kernels import run_parallel

__all__ = ["BernoulliHMM", "SwitchingBernoulli", "forward_filter", "hmmlearn_bernoulli", "predictive_distribution",
           "stationary_distribution"]

_STARTS = ("stationary", "initial")


def forward_filter(log_emission: Tensor, log_transition: Tensor, log_prior: Tensor) -> tuple[Tensor, Tensor]:
    r"""Forward filter of independent hidden Markov chains, in the log domain.

    Chain :math:`c` has :math:`K` states, transition matrix :math:`A^c` and emission log-likelihoods
    :math:`e_{t,c}(k) = \log p(y_{t,c} \mid s^c_t = k, \cdot)`; the filter returns the predictive state
    distributions :math:`\log P(s^c_t \mid y_{<t})` and the predictive log-likelihoods :math:`\log p(y_{t,c} \mid
    y_{<t}) = \operatorname{logsumexp}_k [\log P(s^c_t = k \mid y_{<t}) + e_{t,c}(k)]`. The filtered (updated)
    distribution of bin :math:`t` is ``priors[:, t] + log_emission[:, t] - log_lik[:, t, :, None]``.

    Args:
        log_emission: ``(B, T, C, K)``. log_transition: :math:`\log A^c` ``(C, K, K)`` (rows: from-state).
        log_prior: :math:`\log P(s^c_0)` ``(B, C, K)``.

    Returns ``(priors (B, T + 1, C, K), log_lik (B, T, C))``: ``priors[:, T]`` is the distribution of the step after
    the last. A loop over ``T`` (the filter is sequential), each step ``O(B C K^2)``.
    """
    prior, priors, preds = log_prior, [log_prior], []
    for t in range(log_emission.shape[1]):
        joint = prior + log_emission[:, t]
        pred = torch.logsumexp(joint, -1)  # (B, C)
        prior = torch.logsumexp((joint - pred[..., None])[..., None] + log_transition, -2)
        priors.append(prior)
        preds.append(pred)
    log_lik = torch.stack(preds, 1) if preds else log_emission.new_zeros(*log_emission.shape[:1], 0,
                                                                           log_emission.shape[2])
    return torch.stack(priors, 1), log_lik


def predictive_distribution(emission: Tensor, transition: Tensor, prior: Tensor, *,
                            compiled: bool | None = None) -> Tensor:
    r""":math:`P(s^c_T \mid y_{<T})` ``(B, C, K)``, the predictive state distribution of the bin after the last, by
    the forward filter of :func:`forward_filter` in probabilities: ``emission`` likelihoods ``(B, T, C, K)`` (any
    positive scale per bin and chain, e.g. divided by their largest), transition matrices :math:`A^c` ``(C, K, K)``,
    the first bin's distribution ``(B, C, K)``. Normalized at every bin, so it neither underflows nor needs
    logarithms: a few times cheaper than the log-domain filter where neither the likelihood nor a gradient is needed
    (sampling). ``compiled``: run the compiled CPU kernel (:mod:`dgrn.nn._kernels`, float64 inside; no gradient);
    ``None``: when every input is on the CPU and none needs a gradient."""
    if compiled is None:
        compiled = _compilable(emission, transition, prior)
    if compiled:
        arrays = _arrays(emission, transition, prior.expand(emission.shape[0], -1, -1))
        return _from_kernel(run_parallel(_kernels.predictive_distribution, *arrays, threads=torch.get_num_threads()),
                            emission)
    for t in range(emission.shape[1]):
        prior = torch.einsum("bck,ckl->bcl", prior * emission[:, t], transition)
        prior = prior / prior.sum(-1, keepdim=True)
    return prior


def _compilable(*tensors: Tensor) -> bool:
    """Whether the compiled CPU kernels can take these inputs: all on the CPU, none needing a gradient."""
    return all(t.device.type == "cpu" and not t.requires_grad for t in tensors)


def _arrays(*tensors: Tensor) -> list[np.ndarray]:
    """NumPy views, strides kept (float32 and float64 kept, other dtypes as float64), for a compiled kernel."""
    return [(t if t.dtype in (torch.float32, torch.float64) else t.double()).detach().numpy() for t in tensors]


def _from_kernel(out: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(out).to(like.dtype)


def _scaled(log_emission: Tensor) -> Tensor:
    """Emission likelihoods from their logarithms ``(..., K)``, each row divided by its largest (no underflow)."""
    return (log_emission - log_emission.amax(-1, keepdim=True)).exp()


def stationary_distribution(transition_logits: Tensor) -> Tensor:
    """:math:`\\pi^c` with :math:`\\pi^c A^c = \\pi^c`, :math:`\\sum_k \\pi^c_k = 1` ``(C, K)`` of the chains with
    :math:`A^c` = softmax of the rows of ``transition_logits`` ``(C, K, K)``: one batched linear solve (the balance
    equations with one of them replaced by the normalization), differentiable."""
    a = torch.softmax(transition_logits, -1)
    k = a.shape[-1]
    eye = torch.eye(k, dtype=a.dtype, device=a.device)
    lhs = torch.cat([(a.transpose(-1, -2) - eye)[:, :-1], a.new_ones(a.shape[0], 1, k)], 1)
    rhs = torch.zeros(a.shape[0], k, dtype=a.dtype, device=a.device)
    rhs[:, -1] = 1.0
    pi = torch.linalg.solve(lhs, rhs).clamp_min(0.0)
    return pi / pi.sum(-1, keepdim=True)


class BernoulliHMM(nn.Module):
    r"""Hidden Markov model of the population with Bernoulli neurons (metastable cortical states: Jones et al., PNAS
    2007; Mazzucato et al., J. Neurosci. 2015), optionally one chain per community and with GLM couplings.

    A hidden state :math:`s_t \in \{1..K\}` follows a Markov chain, :math:`P(s_t = l \mid s_{t-1} = k) = A_{kl}`, and
    given it the neurons fire independently, :math:`P(x_{ti} = 1 \mid s_t = k) = \sigma(\theta_{ki})`. The predictive
    distribution of a bin is the filtered mixture

    .. math::
        p(x_t \mid x_{<t}) = \sum_k \pi_t(k) \prod_i \sigma(\theta_{ki})^{x_{ti}}\, \sigma(-\theta_{ki})^{1 - x_{ti}},
        \qquad \pi_{t+1}(l) = \sum_k A_{kl}\, \frac{\pi_t(k)\, p(x_t \mid s_t = k)}{p(x_t \mid x_{<t})},

    computed exactly by the forward filter in the log domain, batched over windows, started at every window's first
    bin at :math:`\pi_0`: the stationary distribution of :math:`A` (``start="stationary"``, the default: training
    windows are cut from the middle of recordings) or a learned initial distribution (``start="initial"``). The first
    ``context`` bins are filtered but not scored. Parameters are unconstrained logits (rows of :math:`A` and
    :math:`\pi_0` by softmax), so the model trains by gradient in :class:`dgrn.models.NextBinModule`;
    :meth:`init_from_data` starts it from Baum-Welch EM (hmmlearn).

    **Communities and couplings** (a switching GLM: slow coarse states, fast fine couplings). With ``communities``
    (a label per neuron, ``C`` communities) every community :math:`c` has its own chain :math:`s^c_t` with matrix
    :math:`A^c`, the chains independent a priori, and with ``history`` :math:`H > 0` the neurons are coupled through
    the past as in :class:`~dgrn.nn.BernoulliGLM`:

    .. math::
        P(x_{ti} = 1 \mid s_t, x_{<t}) = \sigma\Big(\theta_{s^{c_i}_t, i} + \sum_{k=1}^{H} \sum_j W^{(k)}_{ij}\,
        x_{t-k, j}\Big).

    Given the past, the spikes of community :math:`c` depend on the chains only through :math:`s^c`, so the filter
    factorizes exactly over communities (one :math:`K`-state filter each, cost linear in ``C``) and
    :math:`p(x_t \mid x_{<t}) = \prod_c \sum_k \pi^c_t(k) \prod_{i \in c} p(x_{ti} \mid s^c_t = k, x_{<t})`: a mixture
    over the slow states, which an additive slow input to a GLM cannot express. The filter starts at bin ``H``
    (``context >= history``). This is the model class of :func:`dgrn.sim.hidden_markov_kinetic_ising`, and, with
    the communities of the inferred graph, a model of clusters switching on and off.

    ``forward`` returns per-neuron logits shaped like the target, as the factorized nets do, but they are the exact
    chain-rule factors of the joint: logit ``i`` is :math:`\mathrm{logit}\,P(x_{ti} = 1 \mid x_{t,<i}, x_{<t})`
    (the state posterior of its community updated by the neurons before ``i`` in it, in the same bin), so the
    Bernoulli log-likelihood summed over the neurons is :math:`\log p(x_t \mid x_{<t})` itself and the loss, NLL and
    bits per spike of the next-bin module are those of the HMM. Because they condition on the other neurons of the
    scored bin, they are not firing probabilities: those are :meth:`rates`, and :meth:`log_prob` gives the joint
    directly.

    Args:
        n_neurons: ``N``. n_states: ``K``. context: warm-up bins of a window, not scored (>= ``history``).
        start: ``"stationary"`` or ``"initial"`` (see above; only ``"initial"`` has an ``init_logits`` parameter).
        communities: ``N`` integer labels ``0..C-1`` (default: one chain for the whole population). history: lags
            of the couplings (0: none).

    Shapes:
        ``forward(x)``: windows ``(B, W, N)`` 0/1 -> chain-rule logits ``(B, W - context, N)``.
        ``log_prob(x)`` -> :math:`\log p(x_t \mid x_{<t})` ``(B, W - context)``. ``rates(x)`` -> marginal
        :math:`P(x_{ti} = 1 \mid x_{<t})` ``(B, W - context, N)``. ``sample(x, n_samples)``: windows
        ``(B, W >= context, N)`` -> ``(B, n_samples, N)`` draws of the bin after each window. ``start_rollout(x)``
        and ``rollout_step(state)`` -> ``(B, N)``: the same draws bin after bin, each from the window of the last
        ``W`` bins, with the window's emission terms kept from step to step (:func:`dgrn.mesoscale.rollout`).

    Cost: ``O(B W K N)`` for the emission likelihoods (plus ``O(B W H N^2)`` for the couplings), a loop over the
    ``W`` bins of ``(B, C, K, K)`` log-sum-exps (the filter is sequential), and ``O(B W K N)`` for the chain-rule
    logits.
    """

    def __init__(self, n_neurons: int, n_states: int = 4, context: int = 16, start: str = "stationary",
                 communities: Any = None, history: int = 0) -> None:
        super().__init__()
        if n_neurons < 1 or n_states < 1 or context < 0 or history < 0:
            raise ValueError(f"need n_neurons >= 1, n_states >= 1, context >= 0 and history >= 0; got {n_neurons}, "
                             f"{n_states}, {context}, {history}")
        if context < history:
            raise ValueError(f"context ({context} bins) must be at least the couplings' history ({history} bins)")
        if start not in _STARTS:
            raise ValueError(f"unknown start {start!r}; valid: {list(_STARTS)}")
        labels = torch.zeros(n_neurons, dtype=torch.long) if communities is None else torch.as_tensor(communities)
        if labels.shape != (n_neurons,) or labels.is_floating_point() or int(labels.min()) < 0:
            raise ValueError(f"communities must be {n_neurons} integer labels >= 0, got {list(labels.shape)} values")
        labels = torch.unique(labels.long(), return_inverse=True)[1]  # 0..C-1, every label used
        n_comm = int(labels.max()) + 1
        self.n_neurons, self.n_states, self.context, self.start = int(n_neurons), int(n_states), int(context), start
        self.history, self.n_communities = int(history), n_comm
        self.register_buffer("communities", labels, persistent=False)
        order = torch.argsort(labels, stable=True)  # neurons grouped by community, for the chain-rule cumsums
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("first_of_group", torch.searchsorted(labels[order], labels[order]), persistent=False)
        self.emission_logits = nn.Parameter(torch.empty(n_states, n_neurons))  # theta[k, i]
        self.transition_logits = nn.Parameter(torch.empty(n_comm, n_states, n_states))  # A^c = softmax(rows)
        if start == "initial":  # no unused parameter when the chain starts at its stationary distribution
            self.init_logits = nn.Parameter(torch.empty(n_comm, n_states))
        if history:
            self.weight = nn.Parameter(torch.empty(history, n_neurons, n_neurons))  # W^(k+1)[i, j]: j -> i
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every state near 5 % firing with random spread (to break the symmetry between states), sticky chains
        (stay probability 0.9), a uniform initial distribution and no couplings."""
        with torch.no_grad():
            self.emission_logits.normal_(math.log(0.05 / 0.95), 0.5)
            k = self.n_states
            self.transition_logits.copy_(torch.eye(k) * (math.log(9.0 * (k - 1)) if k > 1 else 0.0))
            if self.start == "initial":
                self.init_logits.zero_()
            if self.history:
                self.weight.zero_()

    @torch.no_grad()
    def init_glm(self, bias: Tensor, weight: Tensor, spread: float = 1.0) -> None:
        """Start at a fitted GLM (``bias (N,)``, ``weight (H', N, N)`` as :func:`dgrn.graph.infer_couplings` with
        ``return_params=True`` gives them; its first ``history`` lags are used): every state's logits at the bias
        shifted by evenly spaced offsets in ``[-spread, spread]`` (state 0 lowest), so the states start apart."""
        offsets = torch.linspace(-spread, spread, self.n_states) if self.n_states > 1 else torch.zeros(1)
        self.emission_logits.copy_(torch.as_tensor(bias).to(self.emission_logits)[None] + offsets[:, None].to(
            self.emission_logits))
        if self.history:
            w = torch.as_tensor(weight).to(self.weight)
            self.weight.zero_()
            self.weight[:min(self.history, w.shape[0])] = w[:self.history]

    # --- distributions -------------------------------------------------------------------------------------------
    def log_transition_matrix(self, dtype: torch.dtype | None = None) -> Tensor:
        """:math:`\\log A^c` ``(C, K, K)``, rows (from-state) normalized."""
        return torch.log_softmax(self.transition_logits.to(dtype or self.transition_logits.dtype), -1)

    def stationary_distribution(self, dtype: torch.dtype | None = None) -> Tensor:
        """:math:`\\pi^c` with :math:`\\pi^c A^c = \\pi^c` ``(C, K)`` (:func:`stationary_distribution`)."""
        return stationary_distribution(self.transition_logits.to(dtype or self.transition_logits.dtype))

    def initial_log_distribution(self, dtype: torch.dtype | None = None) -> Tensor:
        """:math:`\\log \\pi^c_0` ``(C, K)``, the state distributions at a window's first filtered bin."""
        if self.start == "initial":
            return torch.log_softmax(self.init_logits.to(dtype or self.init_logits.dtype), -1)
        pi = self.stationary_distribution(dtype)
        return pi.clamp_min(torch.finfo(pi.dtype).tiny).log()

    def _state_logits(self, x: Tensor) -> Tensor:
        """Per-state logits of the bins ``history .. W`` of windows ``x`` ``(B, W, N)`` (the last one is the bin after
        the window), ``(B, W - history + 1, K, N)``: :math:`\\theta_{ki}` plus the coupling drive of the past; without
        history ``(1, 1, K, N)``, the same for every bin (broadcast, see :meth:`_bins`)."""
        theta = self.emission_logits.to(x.dtype)
        if not self.history:
            return theta[None, None]
        padded = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], 1)  # bin W: its past is in the window
        steps, h = x.shape[1] + 1 - self.history, self.history
        weight = self.weight.to(x.dtype)
        drive = sum(padded[:, h - k:h - k + steps] @ weight[k - 1].T for k in range(1, h + 1))  # (B, steps, N)
        return drive[:, :, None, :] + theta

    def _filter(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Forward filter over windows ``x`` ``(B, W, N)`` from bin ``history`` on: the log predictive state
        distributions of every community at bins ``history .. W`` ``(B, W - history + 1, C, K)``,
        :math:`\\log p(x_t \\mid x_{<t})` of bins ``history .. W-1`` ``(B, W - history)`` and the per-state logits
        of :meth:`_state_logits`."""
        logits = self._state_logits(x)
        priors, preds = self._forward(self._log_emission(x[:, self.history:], self._bins(logits, 0)))
        return priors, preds.sum(-1), logits

    def _log_emission(self, target: Tensor, logits: Tensor) -> Tensor:
        r""":math:`\log p(x_{t,c} \mid s^c_t = k, x_{<t})` ``(B, T, C, K)`` of the bins ``target`` ``(B, T, N)``
        with their per-state logits ``(B, T, K, N)`` (without history, ``theta`` is used instead)."""
        member = F.one_hot(self.communities, self.n_communities).to(target.dtype)  # (N, C)
        if self.history:
            target = target[:, :, None, :]
            ll = target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)  # (B, T, K, N)
            return (ll @ member).transpose(-1, -2)
        # the logits do not depend on the past: two (B T, N) x (N, C K) products, no (B, T, K, N) array
        theta = self.emission_logits.to(target.dtype).T[:, None, :]  # (N, 1, K)
        on, off = (F.logsigmoid(theta) * member[..., None]).flatten(1), (F.logsigmoid(-theta) * member[..., None])
        return (target @ on + (1 - target) @ off.flatten(1)).unflatten(-1, (self.n_communities, self.n_states))

    def _forward(self, log_e: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`forward_filter` of every community's chain over the emission terms ``(B, T, C, K)``, started at the
        window-start distribution."""
        return forward_filter(log_e, self.log_transition_matrix(log_e.dtype),
                              self.initial_log_distribution(log_e.dtype).expand(log_e.shape[0], -1, -1))

    def _bins(self, logits: Tensor, first: int, last: int | None = -1) -> Tensor:
        """The logits of :meth:`_state_logits` at steps ``first:last`` (all of them, broadcast, without history)."""
        return logits[:, first:last] if self.history else logits

    def _neuron_priors(self, priors: Tensor) -> Tensor:
        """Community state distributions ``(..., C, K)`` per neuron, ``(..., K, N)``."""
        return priors[..., self.communities, :].transpose(-1, -2)

    # --- next-bin interface --------------------------------------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """Exact :math:`\\log p(x_t \\mid x_{<t})` of the bins ``context .. W-1`` of windows ``x``: ``(B, W - context)``."""
        _check_window(x, self.n_neurons, self.context)
        return self._filter(x)[1][:, self.context - self.history:]

    def forward(self, x: Tensor) -> Tensor:
        """Chain-rule logits :math:`\\mathrm{logit}\\, P(x_{ti} = 1 \\mid x_{t,<i}, x_{<t})`, ``(B, W - context, N)``
        (``i`` after the neurons of its community with smaller indices): their Bernoulli log-likelihoods sum over the
        neurons to :meth:`log_prob`."""
        _check_window(x, self.n_neurons, self.context)
        priors, _, logits = self._filter(x)
        first = self.context - self.history
        lg = self._bins(logits, first)
        on, off = F.logsigmoid(lg), F.logsigmoid(-lg)
        target = x[:, self.context:, None, :]
        ll = target * on + (1 - target) * off  # (B, T, K, N)
        if self.n_communities == 1:  # one chain: plain exclusive cumulative sums, the prior broadcast over neurons
            weight = priors[:, first:-1, 0, :, None] + (ll.cumsum(-1) - ll)
        else:
            ll = ll[..., self.order]  # grouped by community
            before = ll.cumsum(-1) - ll  # exclusive cumulative sums ...
            before = before - before[..., self.first_of_group]  # ... restarted at every community's first neuron
            weight = self._neuron_priors(priors[:, first:-1]) + torch.empty_like(before).index_copy_(
                -1, self.order, before)
        return torch.logsumexp(weight + on, 2) - torch.logsumexp(weight + off, 2)

    def rates(self, x: Tensor) -> Tensor:
        """Firing probabilities :math:`P(x_{ti} = 1 \\mid x_{<t}) = \\sum_k \\pi^{c_i}_t(k)\\, \\sigma(\\cdot)` of the
        scored bins, ``(B, W - context, N)``."""
        _check_window(x, self.n_neurons, self.context)
        priors, _, logits = self._filter(x)
        first = self.context - self.history
        return (self._neuron_priors(priors[:, first:-1]).exp() * torch.sigmoid(self._bins(logits, first))).sum(2)

    @torch.no_grad()
    def sample(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws of the bin after each window ``x`` ``(B, W >= context, N)`` given the whole window: every
        community's filtered state distribution propagated one step, a state drawn from each, then the neurons given
        the states and the past. ``(B, n_samples, N)``, 0/1 in ``x``'s dtype."""
        _check_sample_window(x, self.n_neurons, max(self.context, self.history))
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        priors, _, logits = self._filter(x)
        return self._draw(priors[:, -1], self._bins(logits, -1, None), n_samples, generator)

    def _draw(self, log_prior: Tensor, logits: Tensor, n_samples: int, generator: torch.Generator | None) -> Tensor:
        """``n_samples`` draws of one bin ``(B, n_samples, N)``: a state of every community from its predictive
        distribution ``log_prior`` ``(B, C, K)``, then the neurons at that state's logits ``(B or 1, 1, K, N)``."""
        batch = log_prior.shape[0]
        states = torch.multinomial(log_prior.exp().reshape(-1, self.n_states), n_samples, replacement=True,
                                   generator=generator)
        states = states.reshape(batch, self.n_communities, n_samples)[:, self.communities].transpose(1, 2)
        lg = logits.expand(batch, n_samples, -1, -1)  # (B, S, K, N)
        p = torch.sigmoid(lg.gather(2, states[:, :, None, :]).squeeze(2))  # (B, S, N)
        u = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
        return (u < p).to(logits.dtype)

    @torch.no_grad()
    def start_rollout(self, x: Tensor) -> tuple[RollingWindow, RollingWindow]:
        """The state of a rollout from windows ``x`` ``(B, W, N)`` for :meth:`rollout_step`: the emission likelihoods
        of the bins the window's filter reads, ``(B, W - history, C, K)`` (each bin's scaled to a largest of 1), and
        the window's last ``history`` bins, each a :class:`~dgrn.nn.rolling.RollingWindow`."""
        _check_sample_window(x, self.n_neurons, max(self.context, self.history))
        logits = self._state_logits(x)
        emission = _scaled(self._log_emission(x[:, self.history:], self._bins(logits, 0)))
        return RollingWindow(emission), RollingWindow(x[:, x.shape[1] - self.history:])

    @torch.no_grad()
    def rollout_step(self, state: tuple[RollingWindow, RollingWindow], generator: torch.Generator | None = None
                     ) -> tuple[Tensor, tuple[RollingWindow, RollingWindow]]:
        """One draw of the bin after the window of ``state`` (:meth:`start_rollout`), ``(B, N)``, as :meth:`sample`
        of that window draws it, and the state of the window moved on by one bin (its first bin dropped, the draw
        appended; updated in place). The window's emission likelihoods are kept, so a step costs the filter over the
        window, in probabilities (normalized every bin: only the predictive distribution is needed, not the
        likelihood), plus ``O(B K N)`` for the new bin and ``O(B H N^2)`` for its coupling drive, not
        :meth:`sample`'s ``O(B W K N + B W H N^2)``: the same draws up to rounding."""
        emission, recent = state
        e = emission.values
        prior = predictive_distribution(e, self.log_transition_matrix(e.dtype).exp(),
                                        self.initial_log_distribution(e.dtype).exp().expand(e.shape[0], -1, -1))
        logits = self._state_logits(recent.values)[:, -1:]  # (B, 1, K, N); without history (1, 1, K, N)
        draw = self._draw(prior.log(), logits, 1, generator)  # (B, 1, N)
        emission.push(_scaled(self._log_emission(draw, logits))[:, 0])
        recent.push(draw[:, 0])
        return draw[:, 0], state

    def coupling_matrix(self) -> Tensor | None:
        """Net coupling ``sum_k W^(k)`` ``(N, N)`` (``[i, j]``: influence of ``j`` on ``i``), ``None`` without
        history."""
        return self.weight.sum(0) if self.history else None

    def extra_repr(self) -> str:
        return (f"n_neurons={self.n_neurons}, n_states={self.n_states}, context={self.context}, start={self.start!r}, "
                f"n_communities={self.n_communities}, history={self.history}")

    def _check_single_chain(self, what: str) -> None:
        if self.n_communities > 1 or self.history:
            raise ValueError(f"{what} needs one chain for the population and no couplings (hmmlearn's model); this "
                             f"model has {self.n_communities} communities and history {self.history}")

    # --- hmmlearn ------------------------------------------------------------------------------------------------
    def to_hmmlearn(self, **kwargs: Any):
        """This model as an hmmlearn model (:func:`hmmlearn_bernoulli` with ``startprob_`` = the window-start
        distribution, ``transmat_``, ``lambdas_`` = the firing probabilities), e.g. for Viterbi decoding of the states
        (``.predict(spikes)``) or ``.score``. ``kwargs`` go to its constructor."""
        self._check_single_chain("to_hmmlearn")
        model = hmmlearn_bernoulli(n_components=self.n_states, **kwargs)
        with torch.no_grad():
            model.startprob_ = self.initial_log_distribution(torch.float64)[0].exp().cpu().numpy()
            model.transmat_ = self.log_transition_matrix(torch.float64)[0].exp().cpu().numpy()
            model.lambdas_ = torch.sigmoid(self.emission_logits.double()).cpu().numpy()
        model.n_features = self.n_neurons
        return model

    @torch.no_grad()
    def init_from_data(self, spikes: Any, *, n_iter: int = 100, tol: float = 1e-3, seed: int = 0,
                       lengths: list[int] | None = None, min_prob: float = 1e-4) -> BernoulliHMM:
        """Fit the HMM to ``spikes`` ``(T, N)`` (0/1; counts are clipped at 1) by Baum-Welch EM with hmmlearn
        (:func:`hmmlearn_bernoulli`: the exact Bernoulli likelihood) and start from the fit: firing probabilities,
        transition matrix and, with ``start="initial"``, the initial distribution (probabilities clipped to
        ``[min_prob, 1 - min_prob]`` so the logits stay finite). EM starts at a sticky chain (stay 0.9) and every
        state at the neurons' mean rates times independent Gamma(4, 1/4) factors (``seed``); ``lengths``: of
        independent segments of ``spikes`` (hmmlearn's). Returns ``self``; ``self.hmmlearn_`` keeps the fitted model
        (its ``monitor_`` tells whether EM converged)."""
        self._check_single_chain("init_from_data (Baum-Welch EM)")
        x = np.asarray(torch.as_tensor(spikes).detach().cpu().double().clamp(0, 1))
        if x.ndim != 2 or x.shape[1] != self.n_neurons:
            raise ValueError(f"expected spikes (T, {self.n_neurons}), got {x.shape}")
        k, rng = self.n_states, np.random.default_rng(seed)
        model = hmmlearn_bernoulli(n_components=k, n_iter=n_iter, tol=tol, random_state=seed, init_params="",
                                   params="stl" if self.start == "initial" else "tl")
        rate = x.mean(0).clip(min_prob, 1 - min_prob)
        model.startprob_ = np.full(k, 1.0 / k)
        transmat = np.full((k, k), 0.1 / max(k - 1, 1))
        np.fill_diagonal(transmat, 0.9 if k > 1 else 1.0)
        model.transmat_ = transmat
        model.lambdas_ = (rate * rng.gamma(4.0, 0.25, size=(k, self.n_neurons))).clip(min_prob, 1 - min_prob)
        model.fit(x, lengths)
        p = torch.as_tensor(model.lambdas_).clamp(min_prob, 1 - min_prob)
        a = torch.as_tensor(model.transmat_).clamp_min(min_prob)
        self.emission_logits.copy_(torch.logit(p).to(self.emission_logits))
        self.transition_logits[0] = (a / a.sum(1, keepdim=True)).log().to(self.transition_logits)
        if self.start == "initial":
            self.init_logits[0] = torch.as_tensor(model.startprob_).clamp_min(min_prob).log().to(self.init_logits)
        self.hmmlearn_ = model
        return self


class SwitchingBernoulli(nn.Module):
    r"""Binary units, each switched by its own hidden Markov chain, with context-dependent firing: the latent top
    level of :class:`~dgrn.nn.MultiscaleBornMachine`.

    Unit :math:`u` has a chain :math:`z_{u,t} \in \{0..K-1\}` with transition matrix :math:`A^u` (the chains
    independent a priori, each started at its stationary distribution), and given its state and a context
    :math:`c_t` it is active with probability

    .. math::
        P(y_{u,t} = 1 \mid z_{u,t} = k, c_t) = \sigma\big(a_u(c_t) + \theta_{u,k}\big),

    with :math:`a_u(c) = f_{u,1}(c) - f_{u,0}(c)` from the linear read-out ``field`` (two log-potentials per unit, as in
    :class:`~dgrn.tn.ConditionalMPS`) and state offsets :math:`\theta_{u,k}`. The units are independent given their
    states and the context, so the filter factorizes over units (:func:`forward_filter`) and the exact predictive
    probability of a bin is a product over units of two-component mixtures,
    :math:`p(y_t \mid y_{<t}, c_{\le t}) = \prod_u \sum_k P(z_{u,t} = k \mid y_{<t}, c_{<t})\,
    P(y_{u,t} \mid z_{u,t} = k, c_t)`: a slow state that switches how a unit responds to its context, which an
    additive input cannot express.

    Args:
        n_units: ``n``. in_features: ``F``, the width of the context. n_states: ``K >= 2``.

    Shapes:
        ``filter(y, c)``: activity ``(B, T, n)`` 0/1 and the context of every bin ``(B, T, F)`` (``c[:, t]`` may
        depend on ``y[:, :t]`` only) -> ``(log_lik (B, T, n), posterior (B, T, n, K), log_prior (B, n, K))``: the
        exact :math:`\log p(y_{u,t} \mid y_{<t}, c)`, the filtered state probabilities after bin ``t`` and the log
        predictive state distribution of the bin after the last. ``sample(c, log_prior)``: ``(B, F)``, ``(B, n, K)``
        -> ``(B, n)``. ``update(y, c, log_prior)`` -> the filtered probabilities ``(B, n, K)`` after one bin.
        ``log_emission``, ``update`` and ``sample`` also take the context's :meth:`drive` ``(..., n)`` instead
        (``c=None, drive=...``).
    """

    def __init__(self, n_units: int, in_features: int, n_states: int = 2) -> None:
        super().__init__()
        if n_units < 1 or in_features < 0 or n_states < 2:
            raise ValueError(f"need n_units >= 1, in_features >= 0 and n_states >= 2; got {n_units}, {in_features}, "
                             f"{n_states}")
        self.n_units, self.n_states = int(n_units), int(n_states)
        self.field = nn.Linear(in_features, 2 * n_units)
        self.state_logits = nn.Parameter(torch.empty(n_units, n_states))  # theta[u, k]
        self.transition_logits = nn.Parameter(torch.empty(n_units, n_states, n_states))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """No context drive, states spread evenly over [-1.5, 1.5] in log-odds around the field (state 0 the least
        active; apart, so that gradients can tell them apart), sticky chains (stay probability 0.9)."""
        nn.init.zeros_(self.field.weight)
        nn.init.zeros_(self.field.bias)
        with torch.no_grad():
            self.state_logits.copy_(torch.linspace(-1.5, 1.5, self.n_states).expand(self.n_units, -1))
            self.transition_logits.copy_(torch.eye(self.n_states) * math.log(9.0 * (self.n_states - 1)))

    @torch.no_grad()
    def init_from_data(self, y: Any, *, n_iter: int = 100, seed: int = 0, min_prob: float = 1e-4) -> None:
        """Start every unit's chain at a Baum-Welch fit (hmmlearn, :func:`hmmlearn_bernoulli`) of its activity ``y``
        ``(T, n)`` alone: the field at the unit's mean rate (no context drive), the state offsets at the fitted
        firing probabilities relative to it (states sorted, state 0 the least active) and the fitted transition
        matrix. EM starts at a sticky chain (stay 0.9) with the states' firing probabilities spread around the
        mean."""
        y = np.asarray(torch.as_tensor(y).detach().cpu().double().clamp(0, 1))
        if y.ndim != 2 or y.shape[1] != self.n_units:
            raise ValueError(f"expected activity (T, {self.n_units}), got {y.shape}")
        k = self.n_states
        transmat = np.full((k, k), 0.1 / (k - 1))
        np.fill_diagonal(transmat, 0.9)
        self.field.weight.zero_()
        bias = self.field.bias.view(-1, 2)
        for u in range(self.n_units):
            rate = float(np.clip(y[:, u].mean(), min_prob, 1 - min_prob))
            model = hmmlearn_bernoulli(n_components=k, n_iter=n_iter, random_state=seed, init_params="",
                                       params="tl")
            model.startprob_, model.transmat_ = np.full(k, 1.0 / k), transmat
            spread = torch.sigmoid(torch.logit(torch.tensor(rate)) + torch.linspace(-1.5, 1.5, k)).numpy()
            model.lambdas_ = spread[:, None]
            model.fit(y[:, u:u + 1])
            order = np.argsort(model.lambdas_[:, 0])
            p = torch.as_tensor(model.lambdas_[order, 0]).clamp(min_prob, 1 - min_prob)
            a = torch.as_tensor(model.transmat_[np.ix_(order, order)]).clamp_min(min_prob)
            bias[u, 0], bias[u, 1] = 0.0, math.log(rate / (1 - rate))
            self.state_logits[u] = (torch.logit(p) - bias[u, 1]).to(self.state_logits)
            self.transition_logits[u] = (a / a.sum(1, keepdim=True)).log().to(self.transition_logits)

    def drive(self, c: Tensor, features: slice | None = None) -> Tensor:
        r""":math:`a_u(c) = f_{u,1}(c) - f_{u,0}(c)` ``(..., n)`` of contexts ``c`` ``(..., F)``. With ``features``,
        ``c`` holds only those columns of the context and the result is their part of the drive (the read-out is
        linear, so the parts of a split context add up to its drive; the bias goes with the part that starts at
        column 0): a part that does not change can be computed once."""
        if features is None:
            f = self.field(c).unflatten(-1, (self.n_units, 2))
            return f[..., 1] - f[..., 0]
        weight = self.field.weight[:, features].unflatten(0, (self.n_units, 2))
        bias = self.field.bias.view(self.n_units, 2) if features.start in (None, 0) else None
        return F.linear(c, weight[:, 1] - weight[:, 0], None if bias is None else bias[:, 1] - bias[:, 0])

    def _state_logits(self, c: Tensor | None, drive: Tensor | None = None) -> Tensor:
        drive = self.drive(c) if drive is None else drive
        return drive[..., None] + self.state_logits.to(drive.dtype)  # (..., n, K)

    def log_emission(self, y: Tensor, c: Tensor | None, *, drive: Tensor | None = None) -> Tensor:
        r""":math:`\log P(y_{u} \mid z_{u} = k, c)`: activity ``(..., n)`` and contexts ``(..., F)`` (or their
        :meth:`drive` ``(..., n)``, with ``c=None``) -> ``(..., n, K)``."""
        logits = self._state_logits(c, drive)
        return torch.where(y[..., None] > 0, F.logsigmoid(logits), F.logsigmoid(-logits))

    def log_transition_matrix(self, dtype: torch.dtype) -> Tensor:
        r""":math:`\log A^u` ``(n, K, K)``."""
        return torch.log_softmax(self.transition_logits.to(dtype), -1)

    def log_start(self, dtype: torch.dtype) -> Tensor:
        r"""The log stationary distribution of every chain, where the filter starts, ``(n, K)``."""
        pi = stationary_distribution(self.transition_logits.to(dtype))
        return pi.clamp_min(torch.finfo(pi.dtype).tiny).log()

    def filter(self, y: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if y.dim() != 3 or y.shape[2] != self.n_units or c.shape[:2] != y.shape[:2]:
            raise ValueError(f"expected activity (B, T, {self.n_units}) and contexts (B, T, F), got "
                             f"{tuple(y.shape)} and {tuple(c.shape)}")
        log_e = self.log_emission(y, c)
        start = self.log_start(y.dtype).expand(y.shape[0], -1, -1)
        priors, log_lik = forward_filter(log_e, self.log_transition_matrix(y.dtype), start)
        posterior = (priors[:, :-1] + log_e - log_lik[..., None]).exp()
        return log_lik, posterior, priors[:, -1]

    @torch.no_grad()
    def predictive(self, y: Tensor, start: Tensor, *, drive: Tensor, compiled: bool | None = None) -> Tensor:
        r""":math:`P(z_{u,T} \mid y_{<T}, c_{<T})` ``(B, n, K)``, the state distribution of the bin after the last of
        activity ``y`` ``(B, T, n)`` whose bins' contexts have the drives ``drive`` ``(B, >= T, n)`` (the filter
        reads the first ``T``), the filter started at ``start`` ``(n, K)`` or ``(B, n, K)``: the forward filter in
        probabilities, for sampling (no gradient). ``compiled`` (``None``: on the CPU): a kernel that computes the
        emissions inside the filter (:mod:`dgrn.nn._kernels`), or :func:`predictive_distribution` of the emissions
        scaled per bin."""
        transition = self.log_transition_matrix(drive.dtype).exp()
        start = start.to(drive.dtype).expand(y.shape[0], -1, -1)
        if compiled is None:
            compiled = _compilable(y, drive)
        if compiled:
            arrays = _arrays(drive, y, self.state_logits.to(drive.dtype), transition, start)
            return _from_kernel(run_parallel(_kernels.switching_predictive, *arrays, threads=torch.get_num_threads()),
                                drive)
        emission = _scaled(self.log_emission(y, None, drive=drive[:, :y.shape[1]]))
        return predictive_distribution(emission, transition, start, compiled=False)

    def update(self, y: Tensor, c: Tensor | None, log_prior: Tensor, *, drive: Tensor | None = None) -> Tensor:
        joint = log_prior + self.log_emission(y, c, drive=drive)
        return torch.softmax(joint, -1)

    def sample(self, c: Tensor | None, log_prior: Tensor, generator: torch.Generator | None = None, *,
               drive: Tensor | None = None) -> Tensor:
        p = (log_prior.exp() * torch.sigmoid(self._state_logits(c, drive))).sum(-1)  # the mixture's firing probability
        return (torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype) < p).to(p.dtype)

    def extra_repr(self) -> str:
        return f"n_units={self.n_units}, in_features={self.field.in_features}, n_states={self.n_states}"


def hmmlearn_bernoulli(**kwargs: Any):
    """An hmmlearn HMM with independent Bernoulli emissions (``lambdas_[k, i]`` = firing probability of neuron ``i`` in
    state ``k``); ``kwargs`` go to :class:`hmmlearn.hmm.PoissonHMM`.

    hmmlearn has no multivariate Bernoulli emission: ``CategoricalHMM`` would need one symbol per population pattern
    (:math:`2^N`) and ``MultinomialHMM`` a fixed spike count per bin. ``PoissonHMM`` (independent counts per neuron)
    is the closest, and its M-step for the rates, the posterior-weighted mean of each neuron's activity, is exactly
    the Bernoulli M-step; only its likelihood, :math:`\\lambda^x e^{-\\lambda}`, differs from the Bernoulli
    :math:`p^x (1 - p)^{1 - x}` (by :math:`O(p^2)` per neuron-bin, but over 100 neurons and thousands of bins that
    moves the states). So this subclass keeps hmmlearn's EM, forward-backward and decoding and replaces the emission
    log-likelihood by the Bernoulli one (hmmlearn's extension point for custom emissions), making its EM and
    ``score`` those of :class:`BernoulliHMM`.
    """
    from hmmlearn.hmm import PoissonHMM

    class BernoulliEmissionHMM(PoissonHMM):
        _eps = 1e-12

        def _compute_log_likelihood(self, X):
            p = np.clip(self.lambdas_, self._eps, 1 - self._eps)
            return X @ np.log(p).T + (1 - X) @ np.log1p(-p).T

        def _compute_likelihood(self, X):  # used by implementation="scaling"
            return np.exp(self._compute_log_likelihood(X))

        def _generate_sample_from_state(self, state, random_state):
            return (random_state.random_sample(self.n_features) < self.lambdas_[state]).astype(int)

    return BernoulliEmissionHMM(**kwargs)
