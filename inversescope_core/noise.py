r"""Training noise: pairs are :math:`(\hat x, \hat z + r)`, :math:`r` from one of three families.

``kernel`` (the paper's appendix B.2), for cosine distance :math:`d(a, b) = 1 - \cos(a, b)`:
the density of :math:`r` is :math:`\propto k(d(\hat z + r, \hat z))` on the shell
:math:`(1-\delta)\|\hat z\| \le \|\hat z + r\| \le (1+\delta)\|\hat z\|`. Write
:math:`x = \hat z + r = \rho \|\hat z\| (\cos\theta\, \hat e + \sin\theta\, e_\perp)` with
:math:`\hat e = \hat z / \|\hat z\|` and :math:`e_\perp` a unit vector orthogonal to it. Lebesgue
measure in :math:`n` dimensions factorises as
:math:`\rho^{n-1} d\rho \cdot \sin^{n-2}\theta\, d\theta \cdot d\sigma(e_\perp)`, and the kernel
depends on :math:`\theta` alone, so the three are independent:

- :math:`\rho \in [1-\delta, 1+\delta]` with density :math:`\propto \rho^{n-1}`, sampled by its
  inverse CDF :math:`\rho^n = (1-\delta)^n + U((1+\delta)^n - (1-\delta)^n)`;
- :math:`e_\perp` uniform on the sphere orthogonal to :math:`\hat e` (a projected Gaussian);
- :math:`u = 1 - \cos\theta \in [0, 2]` with density
  :math:`\propto (u(2-u))^{(n-3)/2} \, k(u)` (from :math:`\sin^{n-2}\theta\, d\theta` with
  :math:`\sin\theta = \sqrt{u(2-u)}`), where :math:`k(u) = \exp(-u^2 / 2\varepsilon^2)` (Gaussian)
  or :math:`1\{u < \varepsilon\}` (hard). For :math:`n \ge 3` this density is log-concave, and we
  sample it exactly by rejection under a piecewise-exponential envelope of tangent lines to its
  log (the non-adaptive form of Gilks & Wild's adaptive rejection sampling).

What this implies for large :math:`n`: the volume factor :math:`\sin^{n-2}\theta` overwhelms the
kernel. With the Gaussian kernel and :math:`\varepsilon = 0.1`, the median :math:`u` is 0.60 for
:math:`n = 128` and 0.89 for :math:`n = 768` (:math:`\theta \approx 84°`): the noisy activation
is nearly orthogonal to :math:`\hat z`, far outside :math:`B_\varepsilon`, and carries little of
it. With the hard kernel nearly all mass sits at the rim (:math:`n = 128`: 98 % of draws have
:math:`u > 0.093`), and :math:`\rho` piles up at :math:`1 + \delta`. Exact kernel noise is thus
not "small noise" in high dimension; ``gaussian`` with a small ``scale`` is the gentle choice.

``gaussian``: :math:`r \sim \mathcal N(0, (s\|\hat z\|)^2 / n \cdot I)`, so that
:math:`\|r\| \approx s \|\hat z\|` (``scale`` = s);
:math:`\|r\|^2 n / (s\|\hat z\|)^2 \sim \chi^2_n`.

``none``: :math:`r = 0` (InversionView trains this way).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

Family = Literal["kernel", "gaussian", "none"]


def _log_density(a: float, eps: float, kernel: str) -> tuple[Callable, Callable, Callable]:
    """log f, (log f)' and (log f)'' of u = 1 - cos θ, up to a constant."""
    inv = 1.0 / (eps * eps) if kernel == "gaussian" else 0.0

    def f(u):
        return a * (np.log(u) + np.log(2.0 - u)) - 0.5 * inv * u * u

    def df(u):
        return a * (1.0 / u - 1.0 / (2.0 - u)) - inv * u

    def d2f(u):
        return -a * (1.0 / (u * u) + 1.0 / ((2.0 - u) ** 2)) - inv

    return f, df, d2f


class LogConcaveSampler:
    """Exact rejection sampling of a log-concave density on ``[lo, hi]`` under the upper hull of
    tangents to its log at a few points around the mode."""

    def __init__(self, f: Callable, df: Callable, d2f: Callable, lo: float, hi: float):
        self.f, self.lo, self.hi = f, lo, hi
        span = hi - lo
        inner_lo, inner_hi = lo + 1e-12 * span, hi - 1e-12 * span
        mode = self._mode(df, inner_lo, inner_hi)
        curv = -float(d2f(mode))
        s = 1.0 / math.sqrt(curv) if curv > 0 else span / 4
        pts = {min(max(mode + c * s, inner_lo), inner_hi) for c in (-3, -1.5, -0.5, 0.5, 1.5, 3)}
        pts.add(mode)
        x = np.array(sorted(pts))
        h, g = f(x), df(x)
        # keep points whose tangents have distinct slopes (hull needs strict decrease)
        keep = np.concatenate([[True], np.diff(g) < -1e-12 * (1 + np.abs(g[1:]))])
        self.x, self.h, self.g = x[keep], h[keep], g[keep]
        x, h, g = self.x, self.h, self.g
        z = (h[1:] - h[:-1] - x[1:] * g[1:] + x[:-1] * g[:-1]) / (g[:-1] - g[1:])
        self.edges = np.concatenate([[lo], np.clip(z, lo, hi), [hi]])
        self.log_mass = np.array([self._log_seg_mass(j) for j in range(len(x))])
        w = np.exp(self.log_mass - self.log_mass.max())
        self.probs = w / w.sum()

    @staticmethod
    def _mode(df: Callable, lo: float, hi: float) -> float:
        if df(hi) >= 0:
            return hi
        if df(lo) <= 0:
            return lo
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if df(mid) > 0:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def _env(self, j: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self.h[j] + self.g[j] * (u - self.x[j])

    def _log_seg_mass(self, j: int) -> float:
        a, b, g = self.edges[j], self.edges[j + 1], self.g[j]
        if b <= a:
            return -np.inf
        start = self._env(np.array(j), np.array(a))
        length = b - a
        if abs(g * length) < 1e-12:
            return float(start + math.log(length))
        if g > 0:  # ∫ = e^{env(b)} (1 - e^{-gL}) / g
            return float(start + g * length + math.log(-math.expm1(-g * length)) - math.log(g))
        return float(start + math.log(-math.expm1(g * length)) - math.log(-g))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out: list[np.ndarray] = []
        need = n
        while need > 0:
            m = int(need * 1.3) + 16
            j = rng.choice(len(self.probs), size=m, p=self.probs)
            a, b, g = self.edges[j], self.edges[j + 1], self.g[j]
            length, unif = b - a, rng.random(m)
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                flat = np.abs(g * length) < 1e-12
                pos = b + np.log(np.exp(-g * length) + unif * -np.expm1(-g * length)) / g
                neg = a + np.log1p(unif * np.expm1(g * length)) / g
                u = np.where(flat, a + unif * length, np.where(g > 0, pos, neg))
                u = np.clip(u, self.lo, self.hi)
                accept = np.log(rng.random(m)) < self.f(u) - self._env(j, u)
            got = u[accept & np.isfinite(u)]
            out.append(got[:need])
            need -= len(out[-1])
        return np.concatenate(out)


def cosine_kernel_u_sampler(n_dim: int, epsilon: float, kernel: str) -> LogConcaveSampler:
    """Sampler of u = 1 - cos θ for the kernel family in ``n_dim`` dimensions."""
    if n_dim < 3:
        raise ValueError(f"kernel noise needs activations of at least 3 dimensions, got {n_dim}")
    a = (n_dim - 3) / 2.0
    f, df, d2f = _log_density(a, epsilon, kernel)
    hi = min(epsilon, 2.0) if kernel == "hard" else 2.0
    return LogConcaveSampler(f, df, d2f, 0.0, hi)


def sample_radius(n_dim: int, delta: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """ρ on [1-δ, 1+δ] with density ∝ ρ^(n-1), by inverse CDF in log space."""
    l1, l2 = n_dim * math.log1p(-delta), n_dim * math.log1p(delta)
    unif = rng.random(size)
    log_pow = l2 + np.log(math.exp(l1 - l2) + unif * -math.expm1(l1 - l2))
    return np.exp(log_pow / n_dim)


class NoiseSampler:
    """Draws r for a batch of reference activations z (B, d), reproducibly from ``seed``."""

    def __init__(
        self,
        family: Family,
        n_dim: int,
        epsilon: float,
        delta: float,
        kernel: str = "gaussian",
        scale: float = 0.1,
        seed: int = 0,
    ):
        if family not in ("kernel", "gaussian", "none"):
            raise ValueError(f"unknown noise family {family!r}; accepted: kernel, gaussian, none")
        self.family, self.n_dim, self.delta, self.scale = family, n_dim, delta, scale
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator().manual_seed(seed)
        self.u_sampler = (
            cosine_kernel_u_sampler(n_dim, epsilon, kernel) if family == "kernel" else None
        )

    def state_dict(self) -> dict:
        """The generators' positions (a resumed training draws the noise it would have)."""
        return {"numpy": self.rng.bit_generator.state, "torch": self.torch_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["numpy"]
        self.torch_gen.set_state(state["torch"])

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Noise r with the shape, dtype and device of ``z`` (B, d)."""
        if self.family == "none":
            return torch.zeros_like(z)
        zf = z.detach().double().cpu()  # (B, d)
        norm = zf.norm(dim=1, keepdim=True)  # (B, 1)
        if self.family == "gaussian":
            g = torch.randn(zf.shape, generator=self.torch_gen, dtype=torch.float64)
            r = g * (self.scale * norm / math.sqrt(self.n_dim))
            return r.to(z.dtype).to(z.device)
        batch = zf.shape[0]
        e = zf / norm.clamp_min(1e-30)  # (B, d)
        g = torch.randn(zf.shape, generator=self.torch_gen, dtype=torch.float64)
        g = g - (g * e).sum(1, keepdim=True) * e
        e_perp = g / g.norm(dim=1, keepdim=True)  # (B, d)
        u = torch.from_numpy(self.u_sampler.sample(batch, self.rng))[:, None]  # (B, 1)
        rho = torch.from_numpy(sample_radius(self.n_dim, self.delta, batch, self.rng))[:, None]
        cos = 1.0 - u
        sin = torch.sqrt((u * (2.0 - u)).clamp_min(0.0))
        x = rho * norm * (cos * e + sin * e_perp)  # (B, d)
        return (x - zf).to(z.dtype).to(z.device)
