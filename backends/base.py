"""The interface every backend implements: what the array API standard leaves out."""
from __future__ import annotations

from typing import Any, Callable


class BackendUnavailableError(RuntimeError):
    """A known backend that cannot run here (library not installed, or no device)."""


class Backend:
    """One array library behind the names the model uses.

    Attributes:
      name:  registry name ("numpy", "jax", ...).
      xp:    the array-API namespace (array_api_compat's wrapper where the library needs one).
      device: where arrays live (None where the library has a single default).
      inplace: True when arrays are writeable, so buffers may be updated in place (`acc += g`);
               False for immutable arrays (JAX), where the same code rebinds to a new array.
      static_shapes: True where a compiled function is retraced for every new input shape (JAX), so batches
               pad the MLM head's rows to a few bucket sizes; elsewhere they keep the exact count.
      supports_float64: whether float64 arrays can be made here.
      low_precision: the narrow float dtypes ("bfloat16", "float16") this backend computes matmuls in, which
               mixed precision needs (`minibert.nn.precision`); empty where it has none worth using.
      on_gpu: whether arrays live on a GPU (so timings need `synchronize` and memory is the device's).
      data_shards: devices a training batch is split over by rows (1: one device; see `data_parallel`).
      row_threads: threads a training step splits each batch's rows over on this one device (1: none); each
               computes its rows' share of the loss and gradients and `thread_map` runs them at once (the numpy
               backend on a multi-core CPU; see minibert/nn/step.py and backends/numpy_backend.py).

    Random numbers are functional: `key(seed)` makes a key, `fold_in(key, n)` derives an independent one,
    `uniform(key, shape, dtype)` draws from [0, 1). The same keys work inside `jit`.
    """

    name: str = "base"
    xp: Any = None
    device: Any = None
    inplace: bool = True
    static_shapes: bool = False
    supports_float64: bool = True
    low_precision: tuple[str, ...] = ()
    on_gpu: bool = False
    data_shards: int = 1
    row_threads: int = 1

    # -- host <-> device ----------------------------------------------------------------------
    def asarray(self, host_array, dtype=None):
        """A host (NumPy) array or scalar as an array of this backend; `dtype` is a name ("float32") or None.

        Copy or alias: numpy and strict return an array that shares memory with `host_array` when it already is a
        NumPy array of the asked dtype (no copy: later writes to either one show in the other) and a new array
        when a dtype conversion is needed; jax, torch and cupy always copy (JAX's device_put alone would alias
        an aligned host buffer on the CPU, so the jax backend copies first). Code that writes into its input
        (e.g. in-place accumulation) must therefore not be handed a host array it should leave alone.
        """
        if dtype is not None:
            dtype = self.dtype(dtype)
        return self.xp.asarray(host_array, dtype=dtype, device=self.device)

    def to_numpy(self, x):
        """A backend array as a host NumPy array.

        Copy or alias: numpy, strict, and torch on the CPU return a writeable view of the same memory (a write to
        it changes the backend array); jax returns a read-only array (a view on the CPU); cupy, and torch on a
        GPU, return a copy. Copy it (`np.array(x)`) before writing to it or keeping it past a later update.
        """
        raise NotImplementedError

    def dtype(self, name):
        """The namespace's dtype for `name` ("float32", "float64", "int32", ...); dtypes pass through."""
        if not isinstance(name, str):
            return name
        if name == "float64" and not self.supports_float64:
            raise ValueError(f"dtype 'float64' is not available on backend {self.name!r}: "
                             f"{self.float64_hint()}; allowed here: 'float32'")
        try:
            return getattr(self.xp, name)
        except AttributeError:
            raise ValueError(f"unknown dtype {name!r}; allowed: 'float32', 'float64'") from None

    def float64_hint(self) -> str:
        return "this backend has no float64"

    def low_precision_hint(self) -> str:
        """Why this backend has no (or not that) narrow dtype (`no_low_precision_reason`), and what to use instead."""
        return (f"{self.no_low_precision_reason()}: mixed precision runs on --backend torch (bf16, fp16; CPU or "
                "CUDA), jax (bf16, fp16) or cupy (fp16, and bf16 with ml_dtypes) on a GPU")

    def no_low_precision_reason(self) -> str:
        return f"backend {self.name!r} computes in float32/float64 only"

    # -- what the standard lacks ------------------------------------------------------------------
    def scatter_add(self, table, indices, updates):
        """table[indices[i]] += updates[i] along axis 0, accumulating duplicate indices.

        `indices` is 1-D int [N], `updates` is [N, ...]. Returns the result: `table` itself, updated in place,
        on numpy, cupy and torch; a new array on jax (immutable) and strict (a one-hot product). Always use the
        returned array.
        """
        raise NotImplementedError

    def erf(self, x):
        """The error function, elementwise (exact GELU needs it; the standard has none)."""
        raise NotImplementedError

    def key(self, seed: int):
        """A key for `seed`. Here a tuple of ints on the host (numpy, torch, cupy, strict: `uniform` turns it into
        its library's generator); JAX overrides it with its own key arrays, which work inside `jit`."""
        return (int(seed),)

    def fold_in(self, key, data: int):
        """An independent key derived from `key` and `data`: here the tuple extended by `data`."""
        return key + (int(data),)

    def uniform(self, key, shape, dtype):
        raise NotImplementedError

    def jit(self, fn: Callable, **kwargs) -> Callable:
        """Compile `fn` where a compiler exists (`kwargs` go to that compiler); else return it unchanged."""
        return fn

    def synchronize(self, x=None) -> None:
        """Wait for queued device work (and for `x`, where given) before reading a clock."""

    # -- what reports and benchmarks ask about -----------------------------------------------------------------
    def describe(self) -> dict:
        """Library versions and the device, as JSON-ready values (benchmark reports record them)."""
        return {"backend": self.name, "device": str(self.device)}

    def set_matmul_precision(self, allow_tf32: bool) -> None:
        """float32 matmuls on NVIDIA GPUs: TF32 (10-bit mantissa, faster) when `allow_tf32`, else full float32
        (the default of every GPU backend here). Nothing to choose on a CPU."""

    def track_peak_memory(self) -> "PeakMemory":
        """A context manager measuring the peak device bytes in use while it is open (see PeakMemory)."""
        return PeakMemory()
    # -- data parallelism ----------------------------------------------------------------------------
    def data_parallel(self, devices):
        """This backend over several devices (`devices`: an int or "all"): batches split by rows, parameters
        replicated, one compiled step. Only the JAX backend can (its sharding); others raise ValueError."""
        raise ValueError(f"--devices {devices}: backend {self.name!r} runs on one device; data-parallel training "
                         "over several devices or processes uses JAX's sharding: --backend jax "
                         "(pip install -e '.[jax]')")

    def shard_rows(self, host_array, dtype=None):
        """A host array [R, ...] on the device(s), split by rows over the `data_shards` devices (device d holds
        rows [d*R/n, (d+1)*R/n)); on one device the same as `asarray`."""
        return self.asarray(host_array, dtype)

    def thread_map(self, fn: Callable, items) -> list:
        """[fn(item) for item in items], on `row_threads` threads at once where the backend has them (the
        results in the order of `items`); here one after the other."""
        return [fn(item) for item in items]

    def __repr__(self) -> str:
        return f"<Backend {self.name} device={self.device}>"


class PeakMemory:
    """Peak bytes held by live device arrays between `__enter__` and `__exit__`, measured the same way on every
    GPU library: bytes handed out by its allocator and not yet freed, never the allocator's cached free blocks.
    After the block, `peak_bytes` is that peak (None on host backends, which have no device memory of their own)
    and `method` says how it was read. Subclasses override `start` and `stop`.

        with backend.track_peak_memory() as peak:
            ...                                    # build a model, run steps
        peak.peak_bytes
    """
    method: str = "none: host memory (see the process's RSS instead)"

    def __init__(self):
        self.peak_bytes: int | None = None

    def start(self) -> None:
        """Begin measuring (reset the library's peak counter where it has one)."""

    def stop(self) -> int | None:
        """End measuring; return the peak bytes in use since `start`."""
        return None

    def __enter__(self) -> "PeakMemory":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.peak_bytes = self.stop()
