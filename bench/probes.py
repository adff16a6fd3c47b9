"""Machine probes: this process's memory and page faults, the machine's CPUs, load and pressure, versions."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

MEMORY_METHOD = (
    "peak RSS growth = getrusage(RUSAGE_SELF).ru_maxrss of the worker subprocess, read right after the timed "
    "training steps (before inference and the GEMM), minus its RSS (/proc/self/statm) measured after importing "
    "the library and before building the model: so it covers parameters, optimizer state, activations, "
    "gradients, allocator caches and, for JAX, the compiler's own peak. tracemalloc would miss BLAS and "
    "allocations made outside Python's allocator, so it is not used. On a GPU the device's peak is also "
    "reported, the same quantity for every library: the most bytes held by live arrays at once (not the "
    "allocators' cached free blocks) from the model build to the end of warm-up (the timed steps repeat those "
    "steps): torch.cuda.max_memory_allocated after reset_peak_memory_stats, CuPy's memory-pool bytes in use "
    "followed by a MemoryHook, JAX's peak_bytes_in_use (which XLA counts from the process start). "
    "See backends.base.PeakMemory.")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024     # Linux reports KiB


def _minor_faults() -> int:
    """Page faults of this process so far (minor: a fresh page mapped and zeroed by the kernel)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def machine_info(args) -> dict:
    model, physical = None, set()
    try:
        block = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            if ":" in line:
                key, value = (s.strip() for s in line.split(":", 1))
                block[key] = value
                model = model or (value if key == "model name" else None)
            elif block:
                physical.add((block.get("physical id"), block.get("core id")))
                block = {}
    except OSError:
        pass
    versions = {}
    for package in ("numpy", "jax", "jaxlib", "torch", "transformers", "array-api-compat", "cupy-cuda12x",
                    "cupy-cuda13x", "cupy", "scipy-openblas64", "scipy-openblas32"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        mem_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        mem_total = None
    info = {
        "cpu_model": model or platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "physical_cores": len(physical) if physical and None not in next(iter(physical)) else None,
        "memory_bytes": mem_total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        # settings inherited by every worker that change speed (thread pools, XLA, glibc malloc, NumPy hugepages)
        "env": {k: v for k, v in os.environ.items()
                if k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "GLIBC_TUNABLES",
                         "NUMPY_MADVISE_HUGEPAGE", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
                or k.startswith(("MALLOC_", "JAX_"))},
        "loadavg_start": os.getloadavg(),
    }
    if args.gpu:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["gpus"] = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired) as exc:
            info["gpus"] = [f"nvidia-smi unavailable: {exc}"]
    return info


def cpu_busy_seconds() -> tuple[float, float]:
    """(busy, steal) CPU-seconds of the whole machine since boot, from /proc/stat ((0, 0) where unreadable)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def cpu_pressure_seconds() -> float | None:
    """Seconds (since boot) during which some runnable task waited for a CPU: Linux PSI, /proc/pressure/cpu
    ("some ... total=" in microseconds); None where the kernel has no PSI."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


def wait_quiet(max_wait: float, threshold: float, window: float = 0.5) -> tuple[float, float]:
    """Before a burst (every worker idle): wait, up to `max_wait` seconds, until the machine's other processes
    use fewer than `threshold` cores over a `window`. Returns (seconds waited, busy cores in the last window)."""
    if max_wait <= 0:
        return 0.0, None
    started = time.perf_counter()
    while True:
        before = cpu_busy_seconds()[0]
        time.sleep(window)
        busy = (cpu_busy_seconds()[0] - before) / window
        waited = time.perf_counter() - started
        if busy < threshold or waited >= max_wait:
            return waited, busy
