"""Each noise family against its analytic distribution."""

import math

import numpy as np
import pytest
import torch

from inversescope.core.noise import NoiseSampler, cosine_kernel_u_sampler, sample_radius

N_DRAWS = 20_000
KS_CRIT = 1.95 / math.sqrt(N_DRAWS)  # Kolmogorov-Smirnov, alpha ~ 0.001


def ks_against(samples: np.ndarray, grid: np.ndarray, cdf: np.ndarray) -> float:
    s = np.sort(samples)
    model = np.interp(s, grid, cdf)
    n = len(s)
    return float(max((np.arange(1, n + 1) / n - model).max(), (model - np.arange(n) / n).max()))


def u_cdf(n: int, eps: float, kernel: str) -> tuple[np.ndarray, np.ndarray]:
    """Numerical CDF of u = 1 - cos θ with density ∝ (u(2-u))^((n-3)/2) k(u), by quadrature."""
    hi = eps if kernel == "hard" else 2.0
    u = np.linspace(0.0, hi, 400_001)[1:-1]
    logf = (n - 3) / 2 * (np.log(u) + np.log(2 - u))
    if kernel == "gaussian":
        logf -= u**2 / (2 * eps**2)
    f = np.exp(logf - logf.max())
    cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(u))])
    return u, cdf / cdf[-1]


@pytest.mark.parametrize(
    ("n", "eps", "kernel"),
    [
        (8, 0.3, "gaussian"),
        (128, 0.1, "gaussian"),
        (768, 0.1, "gaussian"),
        (128, 0.1, "hard"),
        (3, 0.5, "hard"),
        (64, 0.5, "gaussian"),
    ],
)
def test_kernel_angle_matches_analytic_density(n, eps, kernel):
    u = cosine_kernel_u_sampler(n, eps, kernel).sample(N_DRAWS, np.random.default_rng(1))
    assert len(u) == N_DRAWS
    grid, cdf = u_cdf(n, eps, kernel)
    assert ks_against(u, grid, cdf) < KS_CRIT


@pytest.mark.parametrize(("n", "delta"), [(4, 0.1), (128, 0.1), (4096, 0.05)])
def test_radius_matches_analytic_cdf(n, delta):
    rho = sample_radius(n, delta, N_DRAWS, np.random.default_rng(2))
    assert rho.min() >= 1 - delta and rho.max() <= 1 + delta
    grid = np.linspace(1 - delta, 1 + delta, 10_001)
    # CDF = (ρ^n - (1-δ)^n) / ((1+δ)^n - (1-δ)^n), in log space
    with np.errstate(divide="ignore"):
        log_num = np.log(-np.expm1(n * (np.log(1 - delta) - np.log(grid)))) + n * np.log(grid)
    log_den = math.log(-math.expm1(n * (math.log(1 - delta) - math.log(1 + delta)))) + n * math.log(
        1 + delta
    )
    with np.errstate(invalid="ignore"):
        cdf = np.exp(np.where(grid > 1 - delta, log_num - log_den, -np.inf))
    assert ks_against(rho, grid, cdf) < KS_CRIT


def test_kernel_noise_end_to_end_distance_and_norm():
    n, eps, delta = 32, 0.2, 0.1
    z = torch.randn(N_DRAWS, n, dtype=torch.float64) * 3
    r = NoiseSampler("kernel", n, eps, delta, "gaussian", seed=3)(z)
    x = z + r
    d = (1 - torch.nn.functional.cosine_similarity(x, z, dim=1)).numpy()
    grid, cdf = u_cdf(n, eps, "gaussian")
    assert ks_against(d, grid, cdf) < KS_CRIT
    ratio = (x.norm(dim=1) / z.norm(dim=1)).numpy()
    assert ratio.min() >= 1 - delta - 1e-9 and ratio.max() <= 1 + delta + 1e-9
    # the orthogonal part points uniformly: its mean direction vanishes
    perp = x - (x * z).sum(1, keepdim=True) / (z * z).sum(1, keepdim=True) * z
    assert (perp / perp.norm(dim=1, keepdim=True)).mean(0).abs().max() < 0.05


def test_gaussian_noise_is_chi_square_scaled():
    n, scale = 64, 0.3
    z = torch.randn(N_DRAWS, n, dtype=torch.float64)
    r = NoiseSampler("gaussian", n, 0.1, 0.1, scale=scale, seed=4)(z)
    stat = (r.norm(dim=1) ** 2 * n / (scale * z.norm(dim=1)) ** 2).numpy()  # ~ chi2_n
    assert abs(stat.mean() - n) < 4 * math.sqrt(2 * n / N_DRAWS)
    assert abs(stat.var() - 2 * n) < 0.1 * 2 * n


def test_none_and_reproducibility():
    z = torch.randn(10, 16)
    assert torch.equal(NoiseSampler("none", 16, 0.1, 0.1)(z), torch.zeros_like(z))
    a = NoiseSampler("kernel", 16, 0.1, 0.1, "hard", seed=5)(z)
    b = NoiseSampler("kernel", 16, 0.1, 0.1, "hard", seed=5)(z)
    assert torch.equal(a, b) and a.dtype == z.dtype
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        NoiseSampler("kernel", 2, 0.1, 0.1)
