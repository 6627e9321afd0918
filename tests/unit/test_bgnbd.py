"""The BG/NBD baseline recovers the parameters of customers simulated from the model,
and its probability of buying again matches the simulated rate."""

from __future__ import annotations

import numpy as np

from services.prediction import bgnbd


def simulate(n: int, seed: int = 4) -> tuple[np.ndarray, ...]:
    """(x, t_x, T, bought in the 30 days after T) of `n` customers drawn from BG/NBD
    with r=0.25, alpha=40 (days), a=0.8, b=2.5, each watched for 60 to 360 days."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.25, 1 / 40.0, n)
    drop = rng.beta(0.8, 2.5, n)
    watched = rng.uniform(60, 360, n)
    x, t_x, later = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / rate[i])
            if t > watched[i] + 30:
                break
            if t > watched[i]:
                later[i] = 1.0
                break
            x[i], t_x[i] = x[i] + 1, t
            if rng.random() < drop[i]:  # gone after this purchase
                break
    return x, t_x, watched, later


def test_fit_recovers_the_parameters_and_the_rate_of_buying_again() -> None:
    x, t_x, big_t, later = simulate(6_000)
    model = bgnbd.fit(x, t_x, big_t)
    assert abs(model.r - 0.25) < 0.08
    assert abs(np.log(model.alpha / 40.0)) < 0.5
    assert abs(np.log(model.a / 0.8)) < 0.7 and abs(np.log(model.b / 2.5)) < 0.9
    probability = model.p_purchase_within(30.0, x, t_x, big_t)
    assert np.all((probability >= 0) & (probability <= 1))
    assert abs(probability.mean() - later.mean()) < 0.02
    # Those who bought often and lately are likelier to buy again than the lapsed.
    assert probability[(x >= 3) & (big_t - t_x < 20)].mean() > probability[x == 0].mean()
