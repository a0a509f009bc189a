"""Exact sums over decode steps of per-step costs that are polynomials of degree <= 2 in the step.

Decode step i (1-based) attends over ``prompt + i`` keys, so an op's FLOPs and bytes at step i are
affine in i with a KV cache, quadratic without (from :func:`~costmodel.analysis.first_polynomial_step`
on). Such an f is fixed by three consecutive values, and Newton's forward differences give it as

    f(i) = v1 + d1 * C(i - 1, 1) + d2 * C(i - 1, 2),   v1 = f(1), d1 = f(2) - f(1),
                                                       d2 = f(3) - 2 f(2) + f(1)

(:func:`newton`, :func:`at`). The hockey stick identity sum_{j < m} C(j, k) = C(m, k + 1) sums it:

    f(1) + ... + f(m) = m v1 + d1 C(m, 2) + d2 C(m, 3)                          (:func:`prefix_sum`)

integers only, no loop over the steps. The roofline time of an op summed over steps,
sum_i max(f(i) / F, b(i) / B), is :func:`sum_max`: g(i) = f(i) / F - b(i) / B is a quadratic in i,
monotone on each side of its vertex, so its sign changes at most twice; each change is found by an
integer binary search, and each piece is summed with :func:`prefix_sum`.

One code, two forms: every function here uses only + - * // and comparisons, plus a select
(``a if c else b`` for Python numbers, ``numpy.where`` for arrays), so the same lines give exact
Python integers for one configuration and element-wise numpy arrays for a sweep grid (numpy is
imported only when an array is passed, or by the per-step curves :func:`step_curve` and
:func:`max_step_curve`). The step count ``n`` is always one Python int; the coefficients may be arrays.
"""

from __future__ import annotations


def newton(v1, v2, v3):
    """(v1, d1, d2): f(1) and the first and second forward differences, from f(1), f(2), f(3)."""
    return v1, v2 - v1, v3 - 2 * v2 + v1


def at(p, i):
    """f(i) = v1 + d1 (i - 1) + d2 C(i - 1, 2) for Newton coefficients ``p`` = (v1, d1, d2).

    (i - 1)(i - 2) is a product of consecutive integers, so ``// 2`` is exact."""
    v1, d1, d2 = p
    x = i - 1
    return v1 + d1 * x + d2 * (x * (x - 1) // 2)


def prefix_sum(p, m):
    """f(1) + ... + f(m), exact: m v1 + d1 C(m, 2) + d2 C(m, 3) (0 for m = 0)."""
    return _dot(p, _binomials(m))


def _binomials(m):
    """(m, C(m, 2), C(m, 3)); m (m - 1) is even and m (m - 1) (m - 2) / 2 divisible by 3
    (consecutive integers), so the ``//`` are exact."""
    c2 = m * (m - 1) // 2
    return m, c2, c2 * (m - 2) // 3


def _dot(p, c):
    return p[0] * c[0] + p[1] * c[1] + p[2] * c[2]


class _Scalar:
    """Selects for Python numbers: exact ints for the step numbers."""

    @staticmethod
    def where(c, a, b):
        return a if c else b

    @staticmethod
    def index(x):
        return int(x)

    @staticmethod
    def any(c):
        return bool(c)

    @classmethod
    def bisect(cls, pf, pb, F, B, wa, lo, hi):
        return _bisect(cls, pf, pb, F, B, wa, lo, hi)


class _Array:
    """Selects for numpy arrays: step numbers as float64 (exact below 2**53; the sums they weigh
    are float seconds anyway, and float64 cannot wrap around as int64 would for C(n, 3))."""

    def __init__(self):
        import numpy as np

        self.np = np
        self.where, self.any = np.where, np.any

    def index(self, x):
        return self.np.asarray(x, dtype=self.np.float64)

    def bisect(self, pf, pb, F, B, wa, lo, hi):
        """:func:`_bisect` on just the grid points that have a change to find."""
        np = self.np
        arrays = np.broadcast_arrays(*pf, *pb, wa, lo, hi)
        lo, hi = (x.ravel() for x in arrays[-2:])
        todo = np.flatnonzero(hi - lo > 1)
        if not todo.size:
            return arrays[-2]
        pf, pb, (wa,) = ([x.ravel()[todo] for x in xs] for xs in (arrays[:3], arrays[3:6], arrays[6:7]))
        found = lo.copy()
        found[todo] = _bisect(self, pf, pb, F, B, wa, lo[todo], hi[todo])
        return found.reshape(arrays[-2].shape)


def _ops_for(*values):
    return _Scalar if all(isinstance(v, (int, float)) for v in values) else _Array()


def sum_max(pf, pb, n: int, flops_per_s: float, bytes_per_s: float):
    """sum_{i=1..n} max(f(i) / F, b(i) / B) and the number of steps where compute wins
    (f(i) / F > b(i) / B), for FLOPs f and bytes b with Newton coefficients ``pf`` and ``pb``.

    g(i) = f(i) / F - b(i) / B = c0 + c1 x + c2 x (x - 1) / 2 with x = i - 1 has its vertex at
    x = 1/2 - c1 / c2: the steps split into two runs at k = floor(3/2 - c1 / c2) (when 1 <= k < n),
    and on each run g is monotone, so which side wins changes at most once, found by binary search.
    Each piece adds its FLOPs (compute wins) or its bytes (memory wins) by exact prefix sums.

    Python ints in: (float seconds, int steps), with the FLOPs and bytes of each side summed as exact
    ints before the one division. Arrays in: the same, element-wise, in float64.
    """
    if n <= 0:
        return 0.0, 0
    ops = _ops_for(*pf, *pb)
    if ops is _Scalar:
        return _sum_max(ops, pf, pb, n, flops_per_s, bytes_per_s)
    with ops.np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _sum_max(ops, pf, pb, n, flops_per_s, bytes_per_s)


def _wins(pf, pb, F, B, i):
    """Compute wins at step i: f(i) / F > b(i) / B."""
    return at(pf, i) / F > at(pb, i) / B


def _bisect(ops, pf, pb, F, B, wa, lo, hi):
    """The last step in [lo, hi) where ``_wins`` is ``wa``, given that it is at lo and is not at hi
    (lo where hi <= lo + 1)."""
    where = ops.where
    while ops.any(hi - lo > 1):
        mid = (lo + hi) // 2
        wide, w = hi - lo > 1, _wins(pf, pb, F, B, mid)
        lo, hi = where(wide & (w == wa), mid, lo), where(wide & (w != wa), mid, hi)
    return lo


def _sum_max(ops, pf, pb, n, F, B):
    where = ops.where

    def wins(i):
        return _wins(pf, pb, F, B, i)

    c1, c2 = pf[1] / F - pb[1] / B, pf[2] / F - pb[2] / B
    kf = (1.5 - c1 / where(c2 != 0, c2, 1.0)) // 1
    k = ops.index(where((c2 != 0) & (kf >= 1) & (kf < n), kf, n))
    bounds, sides = [0], []  # steps bounds[j] + 1 .. bounds[j + 1]: compute wins where sides[j]
    for a, b in ((ops.index(1), k), (k + 1, ops.index(n))):  # (k + 1, n) is empty when k = n
        wa, wb = wins(a), wins(b)
        search = (wa != wb) & (a < b)
        last = where(search, ops.bisect(pf, pb, F, B, wa, a, where(search, b, a)), b)
        bounds += [last, b]  # steps a .. last: wa; last + 1 .. b: wb (none when last = b)
        sides += [wa, wb]
    flops = nbytes = steps = 0
    pf0 = pb0 = 0
    for t0, t1, w in zip(bounds, bounds[1:], sides):
        c = _binomials(t1)
        pf1, pb1 = _dot(pf, c), _dot(pb, c)
        flops = flops + where(w, pf1 - pf0, 0)
        nbytes = nbytes + where(w, 0, pb1 - pb0)
        steps = steps + where(w, t1 - t0, 0)
        pf0, pb0 = pf1, pb1
    return flops / F + nbytes / B, steps


def split_sum(pg, pf, m, n: int):
    """g(1) + ... + g(m) + f(m + 1) + ... + f(n), exact: a per-step cost that follows one
    polynomial (``pg``) up to step m and another (``pf``) after it, e.g. a sliding-window layer
    whose keys grow with the context until the window is full (m may be an array, 0 <= m <= n)."""
    return prefix_sum(pg, m) + prefix_sum(pf, n) - prefix_sum(pf, m)


def split_sum_max(pg, pf, pbg, pbf, m: int, n: int, flops_per_s: float, bytes_per_s: float):
    """:func:`sum_max` over steps 1..m of (``pg``, ``pbg``) and m + 1..n of (``pf``, ``pbf``):
    sum_{i <= m} max(g / F, bg / B) + sum_{m < i <= n} max(f / F, bf / B), and the steps where
    compute wins. The second run is the whole run of f minus its first m steps."""
    s1, c1 = sum_max(pg, pbg, m, flops_per_s, bytes_per_s)
    if m >= n:
        return s1, c1
    s2, c2 = sum_max(pf, pbf, n, flops_per_s, bytes_per_s)
    s3, c3 = sum_max(pf, pbf, m, flops_per_s, bytes_per_s)
    return s1 + s2 - s3, c1 + c2 - c3


def step_curve(p, n: int):
    """f(1), ..., f(n) as a float64 numpy array (numpy imported here only)."""
    import numpy as np

    return at(p, np.arange(1, n + 1, dtype=np.float64))


def max_step_curve(pf, pb, n: int, flops_per_s: float, bytes_per_s: float):
    """max(f(i) / F, b(i) / B) for i = 1..n: the per-step terms of :func:`sum_max`, for plots."""
    import numpy as np

    return np.maximum(step_curve(pf, n) / flops_per_s, step_curve(pb, n) / bytes_per_s)
