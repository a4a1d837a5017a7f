"""Robust statistics of a score vector: the medcouple (a skewness measure robust to outliers,
Brys, Hubert and Struyf 2004) and the adjusted outlyingness it skews a boxplot's fences by
(Hubert and Van der Veeken 2008), as ASSET flags its outliers.

The medcouple follows statsmodels' ``stattools.medcouple`` (the reference implementations call
it; statsmodels is not a dependency): the median, over every pair of a value above and a value
below the median, of ((x_i - m) - (m - x_j)) / (x_i - x_j), with the pairs of values equal to
the median scored -1, 0 or 1 by their order. Quadratic in the length: for a batch's scores."""

from __future__ import annotations

import math

import torch


def medcouple(x: torch.Tensor) -> float:
    """The medcouple of a 1-d tensor (float64 on the CPU)."""
    y = x.detach().double().cpu().flatten().sort(descending=True).values
    n = len(y)
    z = y - (y[(n - 1) // 2] + y[n // 2]) / 2
    lower, upper = z[z <= 0], z[z >= 0]  # upper descending, lower descending (0 first)
    spread = upper[:, None] - lower[None, :]
    h = (upper[:, None] + lower[None, :]) / torch.where(spread == 0, torch.inf, spread)
    ties = int((lower == 0).sum())
    if ties:  # values at the median: -1 above the anti-diagonal, 0 on it, 1 below (statsmodels)
        i, j = torch.meshgrid(torch.arange(ties), torch.arange(ties), indexing="ij")
        anti = i + j - (ties - 1)
        h[-ties:, :ties] = torch.sign(anti).double()
    values = h.flatten().sort().values
    m = len(values)
    return float((values[(m - 1) // 2] + values[m // 2]) / 2)


def adjusted_outlyingness(x: torch.Tensor) -> torch.Tensor:
    """Each value's distance from the median over the distance to the medcouple-skewed boxplot
    fence on its side: q1 - 1.5 e^(-4 mc) IQR and q3 + 1.5 e^(3 mc) IQR for mc > 0, the
    exponents -3 and 4 otherwise (the reference's rule; ASSET flags AO > 2)."""
    v = x.detach().double().cpu().flatten()
    med = v.median()  # the lower middle value, as torch.median in the reference
    q1, q3 = torch.quantile(v, torch.tensor([0.25, 0.75], dtype=torch.float64))
    mc, iqr = medcouple(v), q3 - q1
    low, high = (-4, 3) if mc > 0 else (-3, 4)
    w1, w2 = q1 - 1.5 * math.exp(low * mc) * iqr, q3 + 1.5 * math.exp(high * mc) * iqr
    return torch.where(v > med, (v - med) / (w2 - med), (med - v) / (med - w1))
