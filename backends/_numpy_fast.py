"""Faster NumPy implementations of whole ops, beside the array-API reference in `minibert.ops`.

Why: NumPy runs every elementwise operation as one pass over memory into a fresh temporary, on one core, while
BLAS uses all of them. The exact GELU of the FFN ([B*T, 4H], 16 MB per array at mini B32 T128) makes about ten
such passes forward and seven backward, attention's softmax five over its [B, A, T, T] scores. Here the same
arithmetic, in the same order, runs on cache-sized pieces of the flat arrays (rows, for the softmax; the
temporaries stay in cache and are reused in place), and the pieces are shared between threads: NumPy releases
the GIL inside its loops, so the threads run on different cores.

The results equal the reference's to the last bit (tests/test_fast_ops.py checks each against `minibert.ops`
with the fast ops switched off, float32 and float64); the pieces do not depend on the thread count, so a step
stays deterministic (bit-exact resume). `MINIBERT_REFERENCE_OPS=1` in the environment turns them off
(the numpy backend then runs the array-API reference like every other backend).

Ops (the names `minibert.ops` looks up in `backend.fast_ops`):
    gelu_forward(x) -> (y, cdf)              y = x * cdf,  cdf = (1 + erf(x / sqrt 2)) / 2
    gelu_backward(dy, x, cdf) -> dx          dx = dy * (cdf + x * exp(-x^2 / 2) / sqrt(2 pi))
    softmax_forward(s) -> p                  p = exp(s - max(s)) / sum(exp(s - max(s))), last axis (attention's
                                             [B, A, T, T] scores: 8 MB at mini B32 T128, five passes)
    softmax_backward(dp, p) -> ds            ds = p * (dp - sum(dp * p)), last axis
    dropout_forward(x, rate, key) -> (y, m)  m = (u >= rate) / (1 - rate),  y = x * m,  u = uniform(key)

Random numbers in pieces. The numpy backend's `uniform(key, shape, dtype)` (`uniform` below) fills the flat array
piece by piece, piece i (elements [i * PIECE, (i + 1) * PIECE)) from its own PCG64 stream, SeedSequence(entropy=key,
spawn_key=(i,)): the pieces are independent of each other and of the thread count, so they are drawn on every core
at once and the dropout fast op draws each piece where it uses it, getting the reference's numbers exactly.
"""
from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from backends import _erf

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
PIECE = 1 << 17          # elements per piece, 512 KB of float32: each piece pays ~20 Python-level ufunc calls,
                         # so smaller pieces lose more to call overhead than they gain in cache (measured: the
                         # [4096, 1024] GELU forward 10-15 ms with 1 << 15, 4.6-8.7 ms with 1 << 17)
MIN_PARALLEL = 1 << 17   # arrays smaller than this run on the calling thread alone (thread hand-off costs more)


def usable_threads() -> int:
    """Cores to use: those this process may run on, capped by OMP_NUM_THREADS / OPENBLAS_NUM_THREADS when set
    (so a run pinned to one thread stays on one)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            count = min(count, int(value))
    return max(1, count)


_CALLER_ONLY = threading.local()      # .active: this thread runs its pieces itself (inside a row thread)


@contextmanager
def pieces_on_this_thread():
    """Within it, every op on this thread runs all its pieces on this thread: the numpy backend's row threads
    (`NumpyBackend.thread_map`) already keep every core busy."""
    before = getattr(_CALLER_ONLY, "active", False)
    _CALLER_ONLY.active = True
    try:
        yield
    finally:
        _CALLER_ONLY.active = before


class PiecewisePool:
    """Runs work(lo, hi) over [0, n) in ranges of `piece` (elements, or rows of `width` elements); thread t gets
    a fixed contiguous block of whole pieces, so the pieces do not depend on the thread count."""

    def __init__(self, threads: int):
        self.threads = threads
        self._pool, self._pid = None, None

    def _executor(self):
        """The helper threads, started on first use and again in a forked child (which inherits none)."""
        if self._pid != os.getpid():
            self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="minibert-fast")
            self._pid = os.getpid()
        return self._pool

    def run(self, work, n: int, width: int = 1) -> None:
        piece = max(1, PIECE // width)
        if self.threads == 1 or n * width < MIN_PARALLEL or getattr(_CALLER_ONLY, "active", False):
            _pieces(work, 0, n, piece)
            return
        pool = self._executor()
        bounds = [n * t // self.threads // piece * piece for t in range(self.threads)] + [n]
        futures = [pool.submit(_pieces, work, bounds[t], bounds[t + 1], piece)
                   for t in range(1, self.threads)]
        _pieces(work, bounds[0], bounds[1], piece)
        for future in futures:
            future.result()


def _pieces(work, lo: int, hi: int, piece: int) -> None:
    for start in range(lo, hi, piece):
        work(start, min(start + piece, hi))


SINGLE_THREAD = PiecewisePool(1)     # the pieces run on the calling thread (the numpy backend without fast ops)


def _flat(a):
    """A C-contiguous array's flat view (a copy only for another layout, which the model does not make)."""
    return np.ascontiguousarray(a).reshape(-1)


def _rows(a):
    """[..., K] -> a C-contiguous [R, K] view (R = the product of the leading axes)."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def piece_generator(key, index: int) -> np.random.Generator:
    """The random stream of piece `index` of every draw made with `key` (a tuple of ints): a spawn of the key's
    SeedSequence, so it never equals the stream of another key or piece."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy=key, spawn_key=(index,))))


def uniform(key, shape, dtype, pool: PiecewisePool) -> np.ndarray:
    """[0, 1) draws of `shape`, flat piece i from `piece_generator(key, i)`; the pieces shared among the pool's
    threads (the values do not depend on their number)."""
    out = np.empty(math.prod(shape), dtype=dtype)

    def work(lo, hi):
        piece_generator(key, lo // PIECE).random(out=out[lo:hi], dtype=dtype)

    pool.run(work, out.shape[0])
    return out.reshape(shape)


class FastOps(Mapping):
    """The numpy backend's `fast_ops`: a read-only mapping of op name -> implementation, sharing one thread
    pool of `threads` (default: the usable cores, capped by OMP_NUM_THREADS / OPENBLAS_NUM_THREADS)."""

    def __init__(self, threads: int | None = None):
        self.pool = PiecewisePool(threads or usable_threads())
        self._ops = {"gelu_forward": self.gelu_forward, "gelu_backward": self.gelu_backward,
                     "softmax_forward": self.softmax_forward, "softmax_backward": self.softmax_backward,
                     "dropout_forward": self.dropout_forward}

    def __getitem__(self, name):
        return self._ops[name]

    def __iter__(self):
        return iter(self._ops)

    def __len__(self):
        return len(self._ops)

    def gelu_forward(self, x):
        """Exact GELU: (y = x * cdf, cdf = 0.5 * (1 + erf(x * sqrt(1/2)))), each piece computed as the reference
        computes the whole array (same operations, same order)."""
        x_flat = _flat(x)
        y, cdf = np.empty_like(x_flat), np.empty_like(x_flat)

        def work(lo, hi):
            xs, c = x_flat[lo:hi], cdf[lo:hi]
            np.multiply(xs, SQRT_HALF, out=c)
            c[...] = _erf.erf(c)
            c += 1.0
            c *= 0.5
            np.multiply(xs, c, out=y[lo:hi])

        self.pool.run(work, x_flat.shape[0])
        return y.reshape(x.shape), cdf.reshape(x.shape)

    def gelu_backward(self, dy, x, cdf):
        """dx = dy * (cdf + x * (exp(-0.5 * x * x) / sqrt(2 pi))), in place on one buffer per piece."""
        dy_flat, x_flat, cdf_flat = _flat(dy), _flat(x), _flat(cdf)
        dx = np.empty_like(dy_flat)

        def work(lo, hi):
            xs, out = x_flat[lo:hi], dx[lo:hi]
            np.multiply(xs, -0.5, out=out)
            out *= xs
            np.exp(out, out=out)
            out *= INV_SQRT_2PI
            out *= xs
            out += cdf_flat[lo:hi]
            out *= dy_flat[lo:hi]

        self.pool.run(work, dy_flat.shape[0])
        return dx.reshape(dy.shape)


    def softmax_forward(self, scores):
        """p = exp(s - max(s)) / sum(exp(s - max(s))) over the last axis, rows in pieces, one buffer in place."""
        s_rows = _rows(scores)
        p = np.empty_like(s_rows)

        def work(lo, hi):
            s, out = s_rows[lo:hi], p[lo:hi]
            np.subtract(s, np.max(s, axis=-1, keepdims=True), out=out)
            np.exp(out, out=out)
            out /= np.sum(out, axis=-1, keepdims=True)

        self.pool.run(work, s_rows.shape[0], s_rows.shape[1])
        return p.reshape(scores.shape)

    def softmax_backward(self, dp, p):
        """ds = p * (dp - sum(dp * p)) over the last axis, rows in pieces, one buffer in place."""
        dp_rows, p_rows = _rows(dp), _rows(p)
        ds = np.empty_like(dp_rows)

        def work(lo, hi):
            d, q, out = dp_rows[lo:hi], p_rows[lo:hi], ds[lo:hi]
            np.multiply(d, q, out=out)
            np.subtract(d, np.sum(out, axis=-1, keepdims=True), out=out)
            out *= q

        self.pool.run(work, dp_rows.shape[0], dp_rows.shape[1])
        return ds.reshape(dp.shape)


    def dropout_forward(self, x, rate, key):
        """Inverted dropout as the reference computes it, with `uniform(key, x.shape)`'s numbers, each piece drawn
        into the mask's own buffer, compared, scaled and applied while in cache: (y = x * m, m = (u >= rate) *
        (1 / (1 - rate)))."""
        x_flat = _flat(x)
        y, scaled_mask = np.empty_like(x_flat), np.empty_like(x_flat)
        scale = 1.0 / (1.0 - rate)

        def work(lo, hi):
            m = scaled_mask[lo:hi]
            piece_generator(key, lo // PIECE).random(out=m, dtype=m.dtype)
            np.copyto(m, m >= rate)          # 1.0 where kept, 0.0 where dropped
            m *= scale
            np.multiply(x_flat[lo:hi], m, out=y[lo:hi])

        self.pool.run(work, x_flat.shape[0])
        return y.reshape(x.shape), scaled_mask.reshape(x.shape)


def create_fast_ops():
    """The numpy backend's fast ops, or an empty mapping when MINIBERT_REFERENCE_OPS=1."""
    if os.environ.get("MINIBERT_REFERENCE_OPS", "") not in ("", "0"):
        return {}
    return FastOps()
