"""Two-class Fisher-Jenks natural breaks.

jenkspy (the reference) is O(k n^2): 2.35 s for 50,000 values on these machines, ~15 min for a
million. For two classes the optimum is a sort plus prefix sums (milliseconds); tests check that
it returns jenkspy's break on random data. ``method="jenkspy"`` uses the library itself.
"""

from __future__ import annotations

import numpy as np
import torch


def jenks_break_2class(values: np.ndarray | torch.Tensor, method: str = "exact") -> float:
    """The upper bound of the lower class of the optimal 2-class split (jenkspy's middle break)."""
    x = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    x = x.ravel()
    if x.size < 2 or not np.isfinite(x).all():
        raise ValueError("jenks split needs at least two finite values")
    if method == "jenkspy":
        import jenkspy

        return float(jenkspy.jenks_breaks(x.tolist(), n_classes=2)[1])
    if method != "exact":
        raise ValueError(f"unknown jenks method {method!r}; valid choices: exact, jenkspy")
    s = np.sort(x)
    s = s - s.mean()  # centring keeps the prefix-sum variance formula accurate
    n = s.size
    k = np.arange(1, n)  # size of the lower class
    c1, c2 = np.cumsum(s)[:-1], np.cumsum(s * s)[:-1]
    t1, t2 = c1[-1] + s[-1], c2[-1] + s[-1] ** 2
    ssw = (c2 - c1 ** 2 / k) + ((t2 - c2) - (t1 - c1) ** 2 / (n - k))
    best = int(np.argmin(ssw))
    return float(np.sort(x)[best])


def jenks_upper(scores: torch.Tensor, inclusive: bool = True, method: str = "exact") -> torch.Tensor:
    """Boolean mask of the upper Jenks class of ``scores``.

    ``inclusive`` follows the PIPD reference code, which flags ``score >= break`` (the break value
    itself, the largest member of the lower class, goes up too); ``False`` gives ``score > break``.
    """
    brk = jenks_break_2class(scores, method)
    s = scores.double().cpu()
    return s >= brk if inclusive else s > brk
