"""The parent's schedule for one preset: start a worker per library, warm each up alone, then time them in
rotated rounds of bursts (see bench/__init__.py), and collect memory, GEMM peak and scatter-add."""
from __future__ import annotations

import math
import os
import statistics
import time

from bench.flops import effective_seq_len, head_rows, inference_flops, labelled_count, model_config, train_flops
from bench.probes import cpu_busy_seconds, cpu_pressure_seconds, wait_quiet
from bench.report import _fmt
from bench.stats import summarize
from bench.worker import Worker, WorkerError

REFERENCE_PREFIX = "pytorch"


def worker_env(args, threads) -> dict:
    """The workers' environment: this process's (so they import the same packages), minus the backend choice,
    plus the GPU or CPU thread settings."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("MINIBERT_BACKEND", None)
    if args.gpu:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"    # JAX would grab 75% of the GPU and starve the others
        if args.tf32:
            env["CUPY_TF32"] = "1"
            env.pop("JAX_DEFAULT_MATMUL_PRECISION", None)
        else:
            env.pop("CUPY_TF32", None)
            env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    else:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
        if threads == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    return env


def worker_entries(args) -> list[dict]:
    """The workers of a preset: one per Mini-BERT backend, then one per PyTorch reference: every
    --reference-variants attention with each of --reference-heads (an entry's own :all or :labelled picks its
    head alone); named pytorch-ATTN for the all-positions head, pytorch-ATTN-labelled for the same-work one.
    A bad variant is a ValueError naming it. Every entry trains in --precision; under bf16/fp16 each Mini-BERT
    backend also gets an fp32 entry, NAME-fp32, the baseline of its mixed-precision speed-up."""
    entries = [{"name": b, "kind": "minibert", "backend": b, "precision": args.precision} for b in args.backends]
    if args.precision != "fp32":
        entries += [{"name": f"{b}-fp32", "kind": "minibert", "backend": b, "precision": "fp32"}
                    for b in args.backends]
    for variant in args.reference_variants:
        attn, _, head = variant.partition(":")
        if attn not in ("eager", "sdpa") or head not in ("", "all", "labelled"):
            raise ValueError(f"--reference-variants: bad {variant!r}; allowed: eager or sdpa, optionally "
                             "followed by :all or :labelled (one head only), e.g. eager,sdpa,sdpa:labelled")
        for h in ([head] if head else args.reference_heads):
            if args.task != "mlm" and h != "all":
                raise ValueError(f"--reference-variants {variant!r}: the labelled-rows head is a masked-LM "
                                 f"reference; --task {args.task} compares with the whole model (head all)")
            name = f"{REFERENCE_PREFIX}-{attn}" + ("" if h == "all" else "-labelled")
            if all(e["name"] != name for e in entries):
                entries.append({"name": name, "kind": "reference", "attn": attn, "head": h,
                                "precision": args.precision})
    return entries


def run_preset(preset, args, threads, cpus, log) -> dict:
    requested_seq = args.seq_len
    config = model_config(preset, args.vocab, args.dropout, args.task)
    seq = effective_seq_len(config, requested_seq)
    labelled = head_rows(config, args.batch_size, seq, labelled_count(args.batch_size, seq))
    executed = labelled if args.task != "mlm" else args.batch_size * seq    # BertForMaskedLM: head everywhere
    result = {
        "task": args.task, "config": config.to_dict(), "batch": args.batch_size, "seq_len": seq,
        "seq_len_requested": requested_seq, "seq_len_clamped": seq != requested_seq, "tokens": args.batch_size * seq,
        "labelled_rows": labelled,
        "flops": {"train": train_flops(config, args.batch_size, seq, labelled),
                  "inference": inference_flops(config, args.batch_size, seq),
                  "pytorch_train_executed": train_flops(config, args.batch_size, seq, executed)},
        "libraries": {}, "errors": [], "rounds": [], "threads": threads, "quiet_threshold": args.quiet_threshold,
        "quiet_pressure": args.quiet_pressure,
    }
    env = worker_env(args, threads)
    workers: dict[str, Worker] = {}
    libs = result["libraries"]

    def fail(name, exc):
        message = str(exc) or repr(exc)
        log(f"  !! {name}: {message.splitlines()[0]}")
        result["errors"].append({"library": name, "error": message})
        if name in workers:
            workers.pop(name).kill()

    try:
        # Imports run in every worker at once (nothing is timed yet); building, compiling and warming up then
        # go one worker at a time, so compile times and first steps are not slowed by each other.
        entries = worker_entries(args)
        log("  importing in " + ", ".join(e["name"] for e in entries) + " ...")
        imported = {}
        for entry in entries:
            spec = {**entry, "preset": preset, "vocab": args.vocab, "dropout": args.dropout, "batch": args.batch_size,
                    "seq": seq, "task": args.task, "threads": threads, "cpus": cpus, "gpu": args.gpu, "tf32": args.tf32,
                    "warmup": max(1, args.warmup), "max_warmup": max(args.warmup, args.max_warmup)}
            workers[entry["name"]] = Worker(entry["name"], spec, env, args.timeout)
        for entry in entries:
            name = entry["name"]
            try:
                imported[name] = workers[name].wait_reply("import")["import_s"]
            except WorkerError as exc:
                fail(name, exc)
        for entry in entries:
            name = entry["name"]
            if name not in workers:
                continue
            try:
                ready = workers[name].ask("setup")
            except WorkerError as exc:
                fail(name, exc)
                continue
            libs[name] = {"kind": entry["kind"], "info": ready["info"], "import_s": imported[name],
                          "setup_s": ready["setup_s"], "first_step_s": ready["first_step_s"],
                          "warmup_times_s": ready["warmup_times_s"],
                          "warmup_losses": ready["warmup_losses"],
                          "train": {"times_s": [], "cpu_s": [], "losses": [], "bursts": []},
                          "memory": {"rss_before_build": ready["rss_before_build"],
                                     "peak_before_build": ready["peak_before_build"]}}
            log(f"  {name}: ready in {ready['setup_s']:.1f} s (first step {ready['first_step_s']:.2f} s, "
                f"loss {ready['warmup_losses'][0]:.3f})")

        def rounds(op, repeats, store):
            count = math.ceil(repeats / args.burst) if repeats > 0 and workers else 0
            for r in range(count):
                names = list(workers)
                names = names[r % len(names):] + names[:r % len(names)] if names else names
                record = {"op": op, "round": r, "order": names, "loadavg": os.getloadavg()[0]}
                result["rounds"].append(record)
                for name in names:
                    if name not in workers:
                        continue
                    n = min(args.burst, repeats - r * args.burst)
                    time.sleep(args.pause)
                    waited, idle_cores = wait_quiet(args.quiet_wait, args.quiet_threshold)
                    before, psi0, t0 = cpu_busy_seconds(), cpu_pressure_seconds(), time.perf_counter()
                    try:
                        reply = workers[name].ask(op, n=n, skip=args.burst_warmup)
                    except WorkerError as exc:
                        fail(name, exc)
                        continue
                    wall = time.perf_counter() - t0
                    after, psi1 = cpu_busy_seconds(), cpu_pressure_seconds()
                    slot = libs[name].setdefault(store, {"times_s": [], "cpu_s": [], "losses": [], "bursts": []})
                    slot["times_s"] += reply["times_s"]
                    slot["cpu_s"] += reply["cpu_s"]
                    slot.setdefault("sys_s", []).extend(reply["sys_s"])
                    slot.setdefault("page_faults", []).extend(reply["page_faults"])
                    slot.setdefault("rewarm_s", []).extend(reply["rewarm_s"])
                    slot["losses"] += reply["losses"]
                    slot["bursts"].append({
                        "round": r, "times_s": reply["times_s"], "median_s": statistics.median(reply["times_s"]),
                        # CPU the rest of the machine used while this burst ran, in cores (the worker's own
                        # process CPU time subtracted); steal = time the hypervisor gave to other VMs
                        "foreign_cores": max(0.0, (after[0] - before[0] - reply["total_cpu_s"]) / wall),
                        "steal_cores": (after[1] - before[1]) / wall,
                        # fraction of the burst during which some runnable thread (ours or not) waited for a CPU
                        "cpu_pressure": None if psi0 is None or psi1 is None else (psi1 - psi0) / wall,
                        "waited_for_quiet_s": waited, "busy_cores_before": idle_cores})
                log(f"  {op} round {r + 1}/{count} (load {record['loadavg']:.1f}): " + ", ".join(
                    f"{name} {1000 * libs[name][store]['bursts'][-1]['median_s']:.0f} ms"
                    f" (others {libs[name][store]['bursts'][-1]['foreign_cores']:.1f} cores,"
                    f" psi {_fmt(libs[name][store]['bursts'][-1]['cpu_pressure'], '.2f')})"
                    for name in names if name in workers and libs[name].get(store, {}).get("bursts")))

        rounds("train", args.repeats, "train")
        for name in list(workers):
            try:
                mem = workers[name].ask("memory")
            except WorkerError as exc:
                fail(name, exc)
                continue
            m = libs[name]["memory"]
            m.update(peak_rss=mem["peak_rss"], rss_after_train=mem["rss_now"],
                     peak_delta=mem["peak_rss"] - m["rss_before_build"],
                     steady_delta=mem["rss_now"] - m["rss_before_build"], device_peak=mem["device_peak"])
        if args.infer_repeats > 0:
            for name in list(workers):
                try:      # the first forward compiles on JAX; timed here, and never counted
                    libs[name]["infer_first_s"] = workers[name].ask("infer", n=1, skip=0)["times_s"][0]
                except WorkerError as exc:
                    fail(name, exc)
            rounds("infer", args.infer_repeats, "inference")
        # the GEMM peak and the scatter-add, in two rotated rounds (one with --quick; a peak is a best case:
        # a busy moment in one round does not lower it)
        for r in range(1 if args.quick else 2):
            for op, kwargs in (("gemm", {"size": args.gemm_size, "n": args.gemm_repeats}),
                               ("scatter", {"n": args.scatter_repeats})):
                names = list(workers)
                for name in names[r % max(1, len(names)):] + names[:r % max(1, len(names))]:
                    time.sleep(args.pause)
                    try:
                        reply = workers[name].ask(op, **kwargs)
                    except WorkerError as exc:
                        fail(name, exc)
                        continue
                    reply.pop("ok")
                    if op in libs[name]:
                        libs[name][op]["times_s"] += reply["times_s"]
                    else:
                        libs[name][op] = reply
        if args.profile:
            for name in list(workers):
                if libs[name]["kind"] == "minibert":
                    try:
                        libs[name]["profile"] = workers[name].ask("profile", n=args.profile, top=30)["text"]
                    except WorkerError as exc:
                        fail(name, exc)
    finally:
        for worker in workers.values():
            worker.close()
    summarize(result)
    return result
