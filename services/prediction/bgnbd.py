"""The BG/NBD model (Fader, Hardie and Lee 2005, "Counting your customers the easy
way"), fitted by maximum likelihood with SciPy: a baseline to judge the propensity
model against (docs/predictions.md, "CDNOW").

Each customer buys as a Poisson process with rate lambda ~ Gamma(r, alpha) while
alive, and after each purchase drops out with probability p ~ Beta(a, b). A customer
is summarised at a cutoff by ``x`` (repeat purchases: purchase days after the first),
``t_x`` (time from the first to the last purchase) and ``T`` (time from the first
purchase to the cutoff), all in the same unit (days here). The ``lifetimes`` package
implements the same model but needs pandas, autograd and dill; this is its likelihood
and its probability of buying again, vectorised in NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln


@dataclass(frozen=True)
class BgNbd:
    """Fitted BG/NBD parameters."""

    r: float
    alpha: float
    a: float
    b: float

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> np.ndarray:
        """Probability that each customer is still alive at the cutoff."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        # (b + x - 1) is only used where x > 0; the maximum keeps the log finite elsewhere.
        log_ratio = (
            np.log(a)
            - np.log(np.maximum(b + x - 1, 1e-12))
            + (r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x))
        )
        return np.where(x > 0, 1.0 / (1.0 + np.exp(np.minimum(log_ratio, 700.0))), 1.0)

    def p_purchase_within(
        self, t: float, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray
    ) -> np.ndarray:
        """Probability of at least one purchase in the `t` days after the cutoff: alive,
        times the posterior chance that the Poisson process fires within `t` (a customer
        can only drop out right after a purchase, so no purchase means no dropout)."""
        shape = self.r + x
        silent = np.exp(shape * (np.log(self.alpha + big_t) - np.log(self.alpha + big_t + t)))
        return self.p_alive(x, t_x, big_t) * (1.0 - silent)


def log_likelihood(
    params: np.ndarray, x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray
) -> np.ndarray:
    """Each customer's log-likelihood under (r, alpha, a, b) = `params`."""
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + big_t)
    a4 = np.where(
        x > 0,
        np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x),
        -np.inf,
    )
    return a1 + a2 + np.logaddexp(a3, a4)


def fit(x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray) -> BgNbd:
    """Maximum-likelihood parameters (L-BFGS on the logs of the parameters, so they stay
    positive; a small L2 pull on the logs keeps flat directions finite)."""
    x, t_x, big_t = (np.asarray(v, dtype=np.float64) for v in (x, t_x, big_t))

    def objective(log_params: np.ndarray) -> float:
        total = log_likelihood(np.exp(log_params), x, t_x, big_t).sum()
        return float(-total / len(x) + 1e-6 * np.sum(log_params**2))

    start = np.log(np.array([0.5, max(float(big_t.mean()), 1.0), 1.0, 1.0]))
    found = minimize(objective, start, method="L-BFGS-B", bounds=[(-12.0, 12.0)] * 4)
    r, alpha, a, b = np.exp(found.x)
    return BgNbd(float(r), float(alpha), float(a), float(b))
