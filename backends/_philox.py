"""Philox4x32-10, the counter-based random number generator of Salmon, Moraes, Dror and Shaw, "Parallel random
numbers: as easy as 1, 2, 3" (SC 2011; the Random123 library), and uniform floats drawn from it.

A counter-based generator has no state to allocate or advance: output block i is a pure function
`philox(counter=i, key)`, so every element of a draw is computed independently by its own GPU thread from its own
index. The CuPy backend draws dropout masks this way (one kernel, no cuRAND states to build per site and step);
this module holds the NumPy reference it is tested against and the CUDA source of that kernel.

One round maps the counter (c0, c1, c2, c3) with the key (k0, k1):
    hi0:lo0 = M0 * c0,   hi1:lo1 = M1 * c2      (32 x 32 -> 64-bit products)
    (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
and the key is bumped by the Weyl constants (W0, W1) between rounds; ten rounds. Known-answer vectors from
Random123 are checked in tests/test_backends.py.

Draw layout (both implementations): element i of a flat draw uses counter (i mod 2^32, i div 2^32, 0, 0) and the
64-bit key (k0, k1); float32 takes the top 24 bits of output word 0, (x0 >> 8) * 2^-24; float64 takes 53 bits of
words 0 and 1, ((x0 >> 5) * 2^26 + (x1 >> 6)) * 2^-53 (NumPy's construction). Both lie in [0, 1).
"""
from __future__ import annotations

import numpy as np

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32(counter, key):
    """Philox4x32-10 on NumPy: counter uint32 [N, 4], key (k0, k1) -> uint32 [N, 4]."""
    c = [np.asarray(counter, np.uint32)[:, j].astype(np.uint64) for j in range(4)]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + np.uint64(W0)) & _MASK32, (k1 + np.uint64(W1)) & _MASK32
        p0, p1 = np.uint64(M0) * c[0], np.uint64(M1) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _MASK32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & _MASK32]
    return np.stack(c, axis=1).astype(np.uint32)


def uniform_reference(key, size: int, dtype) -> np.ndarray:
    """The draw layout above on NumPy: `size` floats of `dtype` (float32 or float64) in [0, 1)."""
    index = np.arange(size, dtype=np.uint64)
    counter = np.zeros((size, 4), np.uint32)
    counter[:, 0] = (index & _MASK32).astype(np.uint32)        # i mod 2^32
    counter[:, 1] = (index >> np.uint64(32)).astype(np.uint32)  # i div 2^32
    words = philox4x32(counter, key)
    if np.dtype(dtype) == np.float32:
        return ((words[:, 0] >> 8).astype(np.float32) * np.float32(2.0 ** -24)).astype(np.float32)
    if np.dtype(dtype) == np.float64:
        return ((words[:, 0] >> 5).astype(np.float64) * 2.0 ** 26 + (words[:, 1] >> 6)) * 2.0 ** -53
    raise ValueError(f"dtype must be float32 or float64, got {dtype}")


def key_from_seeds(seeds: tuple) -> tuple[int, int]:
    """The 64-bit Philox key (k0, k1) for a tuple of integer seeds (the backend's key after fold_ins)."""
    k0, k1 = np.random.SeedSequence(seeds).generate_state(2, np.uint32)
    return int(k0), int(k1)


# The same draw as `uniform_reference`, one GPU thread per output element (CuPy ElementwiseKernel body;
# `i` is the element's flat index, `out` its output, CONVERT is replaced per dtype).
CUDA_BODY = f"""
unsigned long long n = (unsigned long long)i;
unsigned int c0 = (unsigned int)n, c1 = (unsigned int)(n >> 32), c2 = 0u, c3 = 0u;
unsigned int a = k0, b = k1;
for (int r = 0; r < {ROUNDS}; ++r) {{
    if (r) {{ a += {W0:#x}u; b += {W1:#x}u; }}
    unsigned long long p0 = (unsigned long long){M0:#x}u * c0;
    unsigned long long p1 = (unsigned long long){M1:#x}u * c2;
    unsigned int hi0 = (unsigned int)(p0 >> 32), lo0 = (unsigned int)p0;
    unsigned int hi1 = (unsigned int)(p1 >> 32), lo1 = (unsigned int)p1;
    c0 = hi1 ^ c1 ^ a; c1 = lo1; c2 = hi0 ^ c3 ^ b; c3 = lo0;
}}
CONVERT
"""
CUDA_CONVERT = {
    "float32": "out = (float)(c0 >> 8) * 5.9604644775390625e-08f;",                       # 2^-24
    "float64": "out = ((double)(c0 >> 5) * 67108864.0 + (double)(c1 >> 6)) * 1.1102230246251565e-16;",  # 2^26, 2^-53
}
