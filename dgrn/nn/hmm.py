"""Hidden Markov model of the population: metastable states, each with its own firing probabilities."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgrn.nn.glm import _check_sample_window, _check_window

__all__ = ["BernoulliHMM", "hmmlearn_bernoulli"]

_STARTS = ("stationary", "initial")


class BernoulliHMM(nn.Module):
    r"""Hidden Markov model of the population with Bernoulli neurons (metastable cortical states: Jones et al., PNAS
    2007; Mazzucato et al., J. Neurosci. 2015).

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

    ``forward`` returns per-neuron logits shaped like the target, as the factorized nets do, but they are the exact
    chain-rule factors of the joint: logit ``i`` is :math:`\mathrm{logit}\,P(x_{ti} = 1 \mid x_{t,<i}, x_{<t})`
    (the state posterior updated by the neurons before ``i`` in the same bin), so the Bernoulli log-likelihood summed
    over the neurons is :math:`\log p(x_t \mid x_{<t})` itself and the loss, NLL and bits per spike of the next-bin
    module are those of the HMM. Because they condition on the other neurons of the scored bin, they are not
    firing probabilities: those are :meth:`rates`, and :meth:`log_prob` gives the joint directly.

    Args:
        n_neurons: ``N``. n_states: ``K``. context: warm-up bins of a window, not scored (>= 0).
        start: ``"stationary"`` or ``"initial"`` (see above; only ``"initial"`` has an ``init_logits`` parameter).

    Shapes:
        ``forward(x)``: windows ``(B, W, N)`` 0/1 -> chain-rule logits ``(B, W - context, N)``.
        ``log_prob(x)`` -> :math:`\log p(x_t \mid x_{<t})` ``(B, W - context)``. ``rates(x)`` -> marginal
        :math:`P(x_{ti} = 1 \mid x_{<t})` ``(B, W - context, N)``. ``sample(x, n_samples)``: windows
        ``(B, W >= context, N)`` -> ``(B, n_samples, N)`` draws of the bin after each window.

    Cost: one ``(B W, N) x (N, K)`` product for the emission likelihoods, a loop over the ``W`` bins of ``(B, K, K)``
    log-sum-exps (the filter is sequential), and ``O(B W K N)`` for the chain-rule logits.
    """

    def __init__(self, n_neurons: int, n_states: int = 4, context: int = 16, start: str = "stationary") -> None:
        super().__init__()
        if n_neurons < 1 or n_states < 1 or context < 0:
            raise ValueError(f"need n_neurons >= 1, n_states >= 1 and context >= 0; got {n_neurons}, {n_states}, "
                             f"{context}")
        if start not in _STARTS:
            raise ValueError(f"unknown start {start!r}; valid: {list(_STARTS)}")
        self.n_neurons, self.n_states, self.context, self.start = int(n_neurons), int(n_states), int(context), start
        self.emission_logits = nn.Parameter(torch.empty(n_states, n_neurons))  # theta[k, i]
        self.transition_logits = nn.Parameter(torch.empty(n_states, n_states))  # A = softmax(rows)
        if start == "initial":  # no unused parameter when the chain starts at its stationary distribution
            self.init_logits = nn.Parameter(torch.empty(n_states))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every state near 5 % firing with random spread (to break the symmetry between states), a sticky chain
        (stay probability 0.9) and a uniform initial distribution."""
        with torch.no_grad():
            self.emission_logits.normal_(math.log(0.05 / 0.95), 0.5)
            k = self.n_states
            self.transition_logits.copy_(torch.eye(k) * (math.log(9.0 * (k - 1)) if k > 1 else 0.0))
            if self.start == "initial":
                self.init_logits.zero_()

    # --- distributions -------------------------------------------------------------------------------------------
    def log_transition_matrix(self, dtype: torch.dtype | None = None) -> Tensor:
        """:math:`\\log A` ``(K, K)``, rows (from-state) normalized."""
        return torch.log_softmax(self.transition_logits.to(dtype or self.transition_logits.dtype), -1)

    def stationary_distribution(self, dtype: torch.dtype | None = None) -> Tensor:
        """:math:`\\pi` with :math:`\\pi A = \\pi`, :math:`\\sum_k \\pi_k = 1` ``(K,)``: one linear solve (the balance
        equations with one of them replaced by the normalization), differentiable."""
        a = torch.softmax(self.transition_logits.to(dtype or self.transition_logits.dtype), -1)
        k = a.shape[0]
        lhs = torch.cat([(a.T - torch.eye(k, dtype=a.dtype, device=a.device))[:-1], a.new_ones(1, k)])
        rhs = torch.zeros(k, dtype=a.dtype, device=a.device)
        rhs[-1] = 1.0
        pi = torch.linalg.solve(lhs, rhs).clamp_min(0.0)
        return pi / pi.sum()

    def initial_log_distribution(self, dtype: torch.dtype | None = None) -> Tensor:
        """:math:`\\log \\pi_0` ``(K,)``, the state distribution at a window's first bin."""
        if self.start == "initial":
            return torch.log_softmax(self.init_logits.to(dtype or self.init_logits.dtype), -1)
        pi = self.stationary_distribution(dtype)
        return pi.clamp_min(torch.finfo(pi.dtype).tiny).log()

    def _emission_log_probs(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """:math:`\\log \\sigma(\\theta)` and :math:`\\log \\sigma(-\\theta)`, each ``(K, N)``."""
        theta = self.emission_logits.to(dtype)
        return F.logsigmoid(theta), F.logsigmoid(-theta)

    def _filter(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Forward filter over windows ``x`` ``(B, W, N)``: the log predictive state distribution of every bin and of
        the bin after the window, ``(B, W + 1, K)``, and :math:`\\log p(x_t \\mid x_{<t})` ``(B, W)``."""
        dtype = x.dtype
        on, off = self._emission_log_probs(dtype)
        log_e = x @ on.T + (1 - x) @ off.T  # (B, W, K): log p(x_t | s_t = k)
        log_a = self.log_transition_matrix(dtype)
        prior = self.initial_log_distribution(dtype).expand(x.shape[0], -1)
        priors, preds = [prior], []
        for t in range(x.shape[1]):  # the filter is sequential in time
            joint = prior + log_e[:, t]
            pred = torch.logsumexp(joint, -1)
            prior = torch.logsumexp((joint - pred[:, None])[:, :, None] + log_a, 1)
            priors.append(prior)
            preds.append(pred)
        empty = x.new_zeros(x.shape[0], 0)
        return torch.stack(priors, 1), (torch.stack(preds, 1) if preds else empty)

    # --- next-bin interface --------------------------------------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """Exact :math:`\\log p(x_t \\mid x_{<t})` of the bins ``context .. W-1`` of windows ``x``: ``(B, W - context)``."""
        _check_window(x, self.n_neurons, self.context)
        return self._filter(x)[1][:, self.context:]

    def forward(self, x: Tensor) -> Tensor:
        """Chain-rule logits :math:`\\mathrm{logit}\\, P(x_{ti} = 1 \\mid x_{t,<i}, x_{<t})`, ``(B, W - context, N)``:
        their Bernoulli log-likelihoods sum over the neurons to :meth:`log_prob`."""
        _check_window(x, self.n_neurons, self.context)
        on, off = self._emission_log_probs(x.dtype)
        prior = self._filter(x)[0][:, self.context:-1, :, None]  # (B, T, K, 1)
        target = x[:, self.context:, None, :]  # (B, T, 1, N)
        ll = target * on + (1 - target) * off  # (B, T, K, N): log p(x_ti | s_t = k)
        before = F.pad(ll.cumsum(-1)[..., :-1], (1, 0))  # log p(x_t,<i | s_t = k), 0 for the first neuron
        weight = prior + before  # log of the unnormalized state posterior given the neurons before i
        return torch.logsumexp(weight + on, 2) - torch.logsumexp(weight + off, 2)

    def rates(self, x: Tensor) -> Tensor:
        """Firing probabilities :math:`P(x_{ti} = 1 \\mid x_{<t}) = \\sum_k \\pi_t(k)\\, \\sigma(\\theta_{ki})` of the
        scored bins, ``(B, W - context, N)``."""
        _check_window(x, self.n_neurons, self.context)
        prior = self._filter(x)[0][:, self.context:-1].exp()
        return prior @ torch.sigmoid(self.emission_logits.to(x.dtype))

    @torch.no_grad()
    def sample(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws of the bin after each window ``x`` ``(B, W >= context, N)`` given the whole window: the
        filtered state distribution of its last bin propagated one step, a state drawn from it, then the neurons
        given the state. ``(B, n_samples, N)``, 0/1 in ``x``'s dtype."""
        _check_sample_window(x, self.n_neurons, self.context)
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        prior = self._filter(x)[0][:, -1].exp()  # (B, K)
        states = torch.multinomial(prior, n_samples, replacement=True, generator=generator)  # (B, S)
        p = torch.sigmoid(self.emission_logits.to(x.dtype))[states]  # (B, S, N)
        u = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
        return (u < p).to(x.dtype)

    def coupling_matrix(self) -> None:
        return None

    def extra_repr(self) -> str:
        return f"n_neurons={self.n_neurons}, n_states={self.n_states}, context={self.context}, start={self.start!r}"

    # --- hmmlearn ------------------------------------------------------------------------------------------------
    def to_hmmlearn(self, **kwargs: Any):
        """This model as an hmmlearn model (:func:`hmmlearn_bernoulli` with ``startprob_`` = the window-start
        distribution, ``transmat_``, ``lambdas_`` = the firing probabilities), e.g. for Viterbi decoding of the states
        (``.predict(spikes)``) or ``.score``. ``kwargs`` go to its constructor."""
        model = hmmlearn_bernoulli(n_components=self.n_states, **kwargs)
        with torch.no_grad():
            model.startprob_ = self.initial_log_distribution(torch.float64).exp().cpu().numpy()
            model.transmat_ = self.log_transition_matrix(torch.float64).exp().cpu().numpy()
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
        self.transition_logits.copy_((a / a.sum(1, keepdim=True)).log().to(self.transition_logits))
        if self.start == "initial":
            self.init_logits.copy_(torch.as_tensor(model.startprob_).clamp_min(min_prob).log().to(self.init_logits))
        self.hmmlearn_ = model
        return self


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
