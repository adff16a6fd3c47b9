"""JAX on its default device (CPU or GPU); arrays are immutable, the training step is compiled with jax.jit."""
from __future__ import annotations

import socket
import time

import numpy as np

from backends._host_memory import keep_freed_memory
from backends.base import Backend, BackendUnavailableError, PeakMemory

INSTALL_HINT = ("pip install -e '.[jax]'  (or: pip install jax; for NVIDIA GPUs: pip install 'jax[cuda12]' "
                "(CUDA 12) or 'jax[cuda13]' (CUDA 13), matching the CUDA major version that nvidia-smi reports)")


class JaxBackend(Backend):
    name = "jax"
    inplace = False
    low_precision = ("bfloat16", "float16")
    static_shapes = True

    def __init__(self, jax):
        self._jax = jax
        self.xp = jax.numpy
        self.device = jax.local_devices()[0]      # this process's first device (jax.devices()[0] on one host)
        self.on_gpu = self.device.platform == "gpu"
        if self.on_gpu:
            # float32 matmuls on NVIDIA GPUs default to TF32 in XLA (10-bit mantissa); ask for true float32,
            # as PyTorch does by default, so results match the CPU backends and transformers.
            jax.config.update("jax_default_matmul_precision", "highest")

    @property
    def supports_float64(self) -> bool:
        return bool(self._jax.config.jax_enable_x64)

    def float64_hint(self) -> str:
        return ("JAX is float32 unless x64 is enabled: set JAX_ENABLE_X64=1, or call "
                "jax.config.update('jax_enable_x64', True) before any array is made")

    def asarray(self, host_array, dtype=None):
        dtype = None if dtype is None else self.dtype(dtype)
        # a fresh host copy: on the CPU, device_put may alias a 64-byte-aligned NumPy buffer (no copy), and a later
        # write to the caller's array would then change this "immutable" JAX array
        return self._jax.device_put(np.array(host_array, dtype=dtype, copy=True), self.device)

    def to_numpy(self, x):
        return np.asarray(x)

    def scatter_add(self, table, indices, updates):
        return table.at[indices].add(updates)

    def erf(self, x):
        return self._jax.scipy.special.erf(x)

    def key(self, seed: int):
        return self._jax.random.key(int(seed))

    def fold_in(self, key, data):
        return self._jax.random.fold_in(key, data)

    def uniform(self, key, shape, dtype):
        return self._jax.random.uniform(key, shape, dtype=self.dtype(dtype))

    def jit(self, fn, **kwargs):
        return self._jax.jit(fn, **kwargs)

    def synchronize(self, x=None) -> None:
        """Wait for `x`; with no `x`, for every computation queued so far: JAX dispatches asynchronously and
        each queued computation writes a live array, so blocking on all live arrays waits for all of them
        (`effects_barrier` alone waits only for side effects such as callbacks)."""
        if x is not None:
            self._jax.block_until_ready(x)
        else:
            self._jax.block_until_ready(self._jax.live_arrays())
            self._jax.effects_barrier()

    def describe(self) -> dict:
        import jaxlib
        return {**super().describe(), "jax": self._jax.__version__, "jaxlib": jaxlib.__version__,
                "device_kind": self.device.device_kind,
                "matmul_precision": str(self._jax.config.jax_default_matmul_precision)}

    def set_matmul_precision(self, allow_tf32: bool) -> None:
        if self.on_gpu:
            self._jax.config.update("jax_default_matmul_precision", "tensorfloat32" if allow_tf32 else "highest")

    def track_peak_memory(self) -> PeakMemory:
        return _JaxPeakMemory(self.device)

    def data_parallel(self, devices):
        """This backend over `devices` (an int, or "all") of every process's devices: a `ShardedJaxBackend`.
        Several processes (`initialize_distributed`) each give devices // processes of their own devices."""
        jax = self._jax
        present = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        processes = jax.process_count()
        where = (f"{len(present)} {self.device.platform} device{'s' if len(present) != 1 else ''} present"
                 + (f" over {processes} processes" if processes > 1 else ""))
        count = len(present) if devices == "all" else devices
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"--devices must be a positive int or 'all', got {devices!r}")
        if count > len(present):
            raise ValueError(f"--devices {count}: only {where}; allowed: 1..{len(present)}, or all"
                             + ("" if self.device.platform != "cpu" else
                                " (CPU devices: set XLA_FLAGS=--xla_force_host_platform_device_count=N or "
                                "JAX_NUM_CPU_DEVICES=N before JAX starts)"))
        if count % processes:
            raise ValueError(f"--devices {count} cannot be split evenly over {processes} processes ({where}); "
                             f"use a multiple of {processes}")
        per_process = count // processes
        chosen = [d for p in range(processes) for d in [d for d in present if d.process_index == p][:per_process]]
        return ShardedJaxBackend(jax, chosen)


class _JaxPeakMemory(PeakMemory):
    """XLA's allocator statistic `peak_bytes_in_use` (bytes held by live buffers, not the allocator's reserve).
    XLA cannot reset it, so the peak covers the process from its start to the end of the block; None on the
    CPU, where the device reports no memory statistics."""
    method = "jax device.memory_stats()['peak_bytes_in_use'] (since the process started)"

    def __init__(self, device):
        super().__init__()
        self._device = device

    def stop(self) -> int | None:
        stats = self._device.memory_stats()
        return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


class ShardedJaxBackend(JaxBackend):
    """JAX data-parallel over a 1-D device mesh with one axis, "data" (automatic partitioning, GSPMD).

    Arrays made by `asarray` (parameters, optimizer state, evaluation batches) are replicated on every device;
    `shard_rows` splits a training batch by rows, device d holding rows [d*B/N, (d+1)*B/N). `jit` compiles one
    program for the whole mesh with every output replicated: XLA's SPMD partitioner runs each device on its rows
    and inserts the collectives the math needs, above all the all-reduce that sums each parameter's gradient
    over the devices (docs/guide/12-data-parallel-training.md). Random numbers are JAX's partitionable threefry:
    a [B*T, H] dropout mask is the same whichever device draws which rows, so masks do not depend on N.
    Across processes (`initialize_distributed`) the mesh lists process 0's devices first, then process 1's...,
    so each process holds a contiguous block of every batch and moves only those rows to its devices.
    """

    def __init__(self, jax, devices: list):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec
        super().__init__(jax)
        self.mesh = Mesh(np.array(devices), ("data",))
        self.data_shards = len(devices)
        self.device = NamedSharding(self.mesh, PartitionSpec())               # replicated
        self._rows = NamedSharding(self.mesh, PartitionSpec("data"))          # split along axis 0

    def _place(self, host_array, sharding):
        # each process fills only its own devices' blocks from the (global) host array
        return self._jax.make_array_from_callback(host_array.shape, sharding, lambda index: host_array[index])

    def asarray(self, host_array, dtype=None):
        dtype = None if dtype is None else self.dtype(dtype)
        return self._place(np.asarray(host_array, dtype=dtype), self.device)

    def shard_rows(self, host_array, dtype=None):
        dtype = None if dtype is None else self.dtype(dtype)
        return self._place(np.asarray(host_array, dtype=dtype), self._rows)

    def to_numpy(self, x):
        if getattr(x, "is_fully_addressable", True):
            return np.asarray(x)
        if x.is_fully_replicated:                 # another process's devices hold the same values
            return np.asarray(x.addressable_data(0))
        raise ValueError("to_numpy: a sharded array spread over several processes has no local copy")

    def key(self, seed: int):
        jax = self._jax
        data = np.asarray(jax.random.key_data(jax.random.key(int(seed))))
        return jax.random.wrap_key_data(self.asarray(data))

    def jit(self, fn, **kwargs):
        return self._jax.jit(fn, out_shardings=self.device, **kwargs)

    def __repr__(self) -> str:
        return f"<Backend jax data-parallel over {self.data_shards} devices: {list(self.mesh.devices)}>"


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, timeout_s: int = 300) -> tuple[int, int]:
    """Join a multi-process JAX run (jax.distributed.initialize) before any JAX computation; returns
    (process index, process count). With no arguments JAX detects the cluster (Slurm, Open MPI, ...).
    On CPU the collectives go through gloo. Fails with RuntimeError after `timeout_s` if the coordinator (or
    another process) does not answer."""
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")   # the default in JAX 0.10; older: none
    if coordinator is not None:
        # JAX's client aborts the whole process (SIGABRT, no Python exception) when it cannot register in time,
        # so what can be checked is checked first: process 0 must be able to open the port, the others must
        # reach it within the timeout
        host, port = coordinator.rsplit(":", 1)
        if process_id == 0:
            _check_port_free(coordinator, int(port))
        else:
            _wait_for_coordinator(host, int(port), timeout_s)
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=int(timeout_s))
    except Exception as exc:          # XlaRuntimeError (timeouts, refused connections), ValueError (no cluster)
        where = (f"coordinator {coordinator} as process {process_id} of {num_processes}" if coordinator else
                 "the auto-detected cluster (Slurm, Open MPI, ...)")
        raise RuntimeError(f"multi-process start-up failed joining {where} within --init-timeout={timeout_s}s: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    return jax.process_index(), jax.process_count()


def create() -> Backend:
    # before JAX starts its threads: glibc fixes how many arenas there may be when a second thread first allocates
    keep_freed_memory()
    try:
        import jax
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'jax' needs JAX, which is not installed ({exc}); install it with: {INSTALL_HINT}") from None
    return JaxBackend(jax)


def _check_port_free(coordinator: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError as exc:
            raise RuntimeError(f"--coordinator {coordinator}: process 0 cannot serve on port {port} ({exc}); "
                               "choose a free port") from None


def _wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
    """Return once something listens at host:port; RuntimeError if nothing does within `timeout_s`."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.25)
    raise RuntimeError(f"multi-process start-up: the coordinator {host}:{port} did not answer within "
                       f"--init-timeout={timeout_s}s ({last}); start process 0 first (--process-id 0) on that host, "
                       "and check the address and that the port is reachable")
