"""The worker protocol: the parent starts one `python -m bench.worker` per library and talks JSON lines.

Parent -> worker: a spec line (answered once the libraries are imported), then one command per line, the first
being "setup" (build the model, warm up), then "train"/"infer" bursts, "memory", "gemm", "scatter", "profile",
"quit". Worker -> parent: every answer is one line starting with REPLY; anything else the libraries print goes to
the worker's log, so their chatter never breaks the protocol.
"""
from __future__ import annotations

import importlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from bench.probes import _minor_faults, _peak_rss_bytes, _rss_bytes
from bench.runners import MINIBERT_MODULES, MinibertRunner, ReferenceRunner

REPLY = "@@benchmark-reply "


def _reply(payload: dict) -> None:
    sys.stdout.write(REPLY + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _import_libraries(spec) -> None:
    """Import the worker's array library (and, for the reference, transformers) before any timing."""
    if spec["kind"] == "reference":
        import torch  # noqa: F401
        import transformers  # noqa: F401

        import minibert.interop.hf  # noqa: F401
    else:
        import backends
        backends.get_backend(spec["backend"])
        for module in MINIBERT_MODULES:
            importlib.import_module(module)


def worker_main() -> int:
    """Serve the parent: a JSON spec line (answered once the libraries are imported), then one JSON command per
    line, the first being "setup" (build the model, warm up); every answer is one REPLY line."""
    spec = json.loads(sys.stdin.readline())
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])
    try:
        t0 = time.perf_counter()
        _import_libraries(spec)
        _reply({"ok": True, "import_s": time.perf_counter() - t0})
        cmd = json.loads(sys.stdin.readline() or '{"op": "quit"}')
        if cmd["op"] != "setup":
            return 0
        started = time.perf_counter()
        runner = ReferenceRunner(spec) if spec["kind"] == "reference" else MinibertRunner(spec)
        t0 = time.perf_counter()
        first_loss = runner.train_step()          # includes compilation on JAX
        first_step_s = time.perf_counter() - t0
        losses, warm_times = [first_loss], [first_step_s]
        # at least `warmup` steps, more (up to `max_warmup`) while each step is still >10% faster than the one
        # before: NumPy's allocator takes a few steps to stop mapping fresh pages for every large array
        while len(warm_times) < spec["warmup"] or (
                2 <= len(warm_times) < spec["max_warmup"] and warm_times[-1] < 0.9 * warm_times[-2]):
            t0 = time.perf_counter()
            losses.append(runner.train_step())
            warm_times.append(time.perf_counter() - t0)
        runner.device_peak()                      # read and stopped now, before any timed step
        _reply({"ok": True, "info": runner.info(), "first_step_s": first_step_s, "warmup_times_s": warm_times,
                "setup_s": time.perf_counter() - started, "warmup_losses": losses,
                "rss_before_build": runner.rss_before_build, "peak_before_build": runner.peak_before_build})
    except Exception as exc:
        _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]})
        return 1

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "quit":
                _reply({"ok": True})
                return 0
            if op in ("train", "infer"):
                fn = runner.train_step if op == "train" else runner.infer
                times, cpu, sys_cpu, faults, losses = [], [], [], [], []
                rewarm, start = [], os.times()
                for _ in range(cmd.get("skip", 0)):      # untimed: the first step after the worker sat idle
                    t0 = time.perf_counter()
                    fn()
                    rewarm.append(time.perf_counter() - t0)
                for _ in range(cmd["n"]):
                    u0, f0, t0 = os.times(), _minor_faults(), time.perf_counter()
                    value = fn()
                    times.append(time.perf_counter() - t0)
                    u1 = os.times()
                    cpu.append(u1.user + u1.system - u0.user - u0.system)
                    sys_cpu.append(u1.system - u0.system)
                    faults.append(_minor_faults() - f0)
                    if value is not None:
                        losses.append(value)
                end = os.times()
                _reply({"ok": True, "times_s": times, "cpu_s": cpu, "sys_s": sys_cpu, "page_faults": faults,
                        "losses": losses, "rewarm_s": rewarm,
                        "total_cpu_s": end.user + end.system - start.user - start.system})
            elif op == "memory":
                _reply({"ok": True, "peak_rss": _peak_rss_bytes(), "rss_now": _rss_bytes(),
                        "device_peak": runner.device_peak()})
            elif op == "gemm":
                _reply({"ok": True, **runner.gemm(cmd["size"], cmd["n"])})
            elif op == "scatter":
                _reply({"ok": True, **runner.scatter(cmd["n"])})
            elif op == "profile":
                _reply({"ok": True, "text": runner.profile(cmd["n"], cmd.get("top", 30))})
            else:
                _reply({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as exc:
            _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]})
    return 0


class WorkerError(RuntimeError):
    pass


class Worker:
    """A worker subprocess and a reader thread that queues its REPLY lines (anything else it prints goes to
    its log, so library chatter never breaks the protocol)."""

    def __init__(self, name, spec, env, timeout):
        self.name, self.timeout = name, timeout
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.worker"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1)
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                self.replies.put(json.loads(line[len(REPLY):]))
            else:
                self.log.write(line)
        self.replies.put(None)

    def log_tail(self, chars=2000):
        try:
            self.log.flush()
            return Path(self.log.name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_reply(self, what):
        try:
            reply = self.replies.get(timeout=self.timeout)
        except queue.Empty:
            self.kill()
            raise WorkerError(f"no answer to {what} within {self.timeout:.0f} s (worker killed)") from None
        if reply is None:
            code = self.proc.wait()
            raise WorkerError(f"worker exited (code {code}) during {what}; log tail:\n{self.log_tail()}")
        if not reply.get("ok"):
            raise WorkerError(f"{what} failed: {reply.get('error')}\n{reply.get('traceback', '')}")
        return reply

    def ask(self, op, **kwargs):
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass   # the reader will report the exit
        return self.wait_reply(op)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.ask("quit")
            except WorkerError:
                pass
        self.kill()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    sys.exit(worker_main())
