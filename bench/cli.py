"""The command line of scripts/benchmark.py: flags, defaults, and the report written at the end."""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import bench
from bench.flops import FLOP_METHOD, LABEL_RATE, NUM_LABELS, TASKS
from bench.probes import MEMORY_METHOD, machine_info
from bench.report import format_report
from bench.schedule import run_preset, worker_entries
from minibert.config import PRESETS

CPU_PRESETS = ("seed", "mini")
GPU_PRESETS = ("mini", "small")
MINIBERT_BACKENDS = ("numpy", "jax", "cupy", "torch", "strict")
LOW_PRECISIONS = ("bf16", "fp16")
NO_LOW_PRECISION = ("numpy", "strict")       # backends that refuse --precision bf16/fp16 (see minibert.nn.precision)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="scripts/benchmark.py", description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", type=lambda s: [x for x in s.split(",") if x],
                   help="comma-separated Mini-BERT backends (default: numpy,jax on CPU; cupy,jax with --gpu; "
                        "with --precision bf16/fp16: torch,jax, or cupy,jax,torch with --gpu; those not installed "
                        "are skipped)")
    p.add_argument("--precision", choices=LOW_PRECISIONS + ("fp32",), default="fp32",
                   help="training steps in fp32, or bf16/fp16 mixed precision for every library: Mini-BERT's "
                        "--precision policy, PyTorch's torch.autocast (fp16 with its GradScaler); each Mini-BERT "
                        "backend then also runs an fp32 entry (NAME-fp32), so the speed-up is measured side by "
                        "side. Inference stays float32 everywhere (default fp32)")
    p.add_argument("--presets", nargs="+", choices=list(PRESETS),
                   help=f"model presets (default: {' '.join(CPU_PRESETS)}; with --gpu {' '.join(GPU_PRESETS)})")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128,
                   help="tokens per sequence; a preset with a smaller max_position uses that (said in the table)")
    p.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout (default 0.1)")
    p.add_argument("--vocab", type=int, default=8192, help="vocabulary size for every preset (default 8192)")
    p.add_argument("--threads", type=int, help="threads per library (default: all usable cores); with fewer "
                   "than all cores every worker is also pinned to the first N cores, which bounds JAX too")
    p.add_argument("--repeats", type=int, help="timed training steps per library (default 10; --quick 4)")
    p.add_argument("--infer-repeats", type=int, help="timed inference forwards per library (default 6; --quick 2; "
                   "0 skips inference)")
    p.add_argument("--burst", type=int, default=2, help="timed steps per library per round (default 2)")
    p.add_argument("--burst-warmup", type=int, default=1,
                   help="untimed steps at the start of every burst (default 1): on this kind of VM the first step "
                        "after a worker sat idle for seconds pays much more for its page faults (measured: NumPy "
                        "mini 1.3-2.0 s instead of 1.15 s), while a training loop runs its steps back to back")
    p.add_argument("--warmup", type=int, help="untimed steps after building the model, the first compiles on "
                   "JAX (default 2; --quick 1)")
    p.add_argument("--max-warmup", type=int, default=6, help="warm-up continues past --warmup, up to this many "
                   "steps, while each step is still >10%% faster than the one before (default 6)")
    p.add_argument("--gemm-size", type=int, help="n for the n x n x n float32 GEMM peak (default 2048; 8192 --gpu)")
    p.add_argument("--gemm-repeats", type=int, default=3)
    p.add_argument("--scatter-repeats", type=int, default=5)
    p.add_argument("--task", choices=TASKS, default="mlm",
                   help="mlm: the masked-LM pre-training step (default); sequence: the sentence-classification "
                        f"fine-tuning step ({NUM_LABELS} classes, pooler + classifier on [CLS], one label per "
                        "sequence), against transformers' BertForSequenceClassification")
    p.add_argument("--reference-variants", type=lambda s: [x for x in s.split(",") if x],
                   help="PyTorch attention implementations: eager, sdpa (default eager,sdpa); each runs with every "
                        "--reference-heads head, or with the one named after a colon (eager:labelled)")
    p.add_argument("--reference-heads", type=lambda s: [x for x in s.split(",") if x], default=["all", "labelled"],
                   help="MLM heads of the PyTorch references (default all,labelled): all = BertForMaskedLM as "
                        "users run it, logits at all B*T positions (the all-positions reference, *); labelled = "
                        "its BertModel and MLM head (cls, same weights) applied only at the labelled rows, same "
                        "loss (the same-work reference, +: what Mini-BERT computes). Each reference is the faster "
                        "attention of its head. --task sequence has one head (all)")
    p.add_argument("--pause", type=float, default=0.2, help="seconds between bursts, so spinning thread pools "
                   "of the previous library go idle (default 0.2)")
    p.add_argument("--quiet-wait", type=float, help="before each burst, wait up to this many seconds for the "
                   "other processes on the machine to use fewer than --quiet-threshold cores ("
                   "0, the default, measures at once)")
    p.add_argument("--quiet-threshold", type=float, default=0.3,
                   help="cores of other processes' CPU use below which the machine counts as quiet (default 0.3); "
                        "without PSI, bursts during which others used more are flagged as noisy")
    p.add_argument("--quiet-pressure", type=float, default=0.1,
                   help="a burst is noisy when some runnable thread waited for a CPU (Linux PSI, /proc/pressure/cpu) "
                        "during at least this fraction of it (default 0.1)")
    p.add_argument("--timeout", type=float, default=900, help="seconds one worker command may take (default 900)")
    p.add_argument("--quick", action="store_true", help="fewer repeats: under 2 minutes on 2 cores")
    p.add_argument("--gpu", action="store_true", help="GPU run: backends cupy,jax against PyTorch CUDA")
    p.add_argument("--tf32", action="store_true", help="with --gpu: allow TF32 matmuls in every library "
                   "(default: full float32 everywhere: torch allow_tf32 off, JAX precision highest, CuPy default)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also cProfile STEPS training steps of each eager backend and print the top functions")
    p.add_argument("--json", default="benchmark.json", help="where to write the JSON report (default benchmark.json)")
    args = p.parse_args(argv)
    quick = args.quick
    low = args.precision in LOW_PRECISIONS
    if args.backends is None:
        wanted = (("cupy", "jax", "torch") if low else ("cupy", "jax")) if args.gpu else (
            ("torch", "jax") if low else ("numpy", "jax"))
        args.backends = [b for b in wanted if importlib.util.find_spec(b) is not None]
        args.skipped_backends = [b for b in wanted if b not in args.backends]
    else:
        args.skipped_backends = []
        for b in args.backends:
            if b not in MINIBERT_BACKENDS:
                p.error(f"--backends: unknown {b!r}; allowed: {', '.join(MINIBERT_BACKENDS)}")
            if low and b in NO_LOW_PRECISION:
                p.error(f"--backends {b} with --precision {args.precision}: {b} computes in float32/float64 only; "
                        "mixed precision runs on torch, jax or cupy")
    args.presets = args.presets or list(GPU_PRESETS if args.gpu else CPU_PRESETS)
    args.repeats = args.repeats if args.repeats is not None else (4 if quick else 10)
    args.infer_repeats = args.infer_repeats if args.infer_repeats is not None else (2 if quick else 6)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.quiet_wait = args.quiet_wait or 0.0
    args.gemm_size = args.gemm_size or (8192 if args.gpu else 2048)
    if args.reference_variants is None:
        args.reference_variants = ["eager", "sdpa"]
    bad = [h for h in args.reference_heads if h not in ("all", "labelled")]
    if bad or not args.reference_heads:
        p.error(f"--reference-heads: bad {','.join(bad) or 'empty list'}; allowed: all, labelled")
    if args.task != "mlm":
        args.reference_heads = ["all"]
    try:
        worker_entries(args)
    except ValueError as exc:
        p.error(str(exc))
    if args.quick and args.gemm_repeats == 3:
        args.gemm_repeats = 2
    for name in ("batch_size", "seq_len", "vocab", "burst", "gemm_size", "gemm_repeats", "scatter_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.burst_warmup < 0 or args.warmup < 1:
        p.error("--burst-warmup must be >= 0 and --warmup >= 1")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    if args.tf32 and not args.gpu:
        p.error("--tf32 needs --gpu")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    usable = sorted(os.sched_getaffinity(0))
    threads = args.threads or len(usable)
    if threads < 1:
        raise SystemExit("--threads must be >= 1")
    cpus = usable[:threads] if threads < len(usable) else None
    started = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    report = {"schema": 1, "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "argv": sys.argv[1:] if argv is None else list(argv),
              "settings": {"backends": args.backends, "skipped_backends": args.skipped_backends,
                           "presets": args.presets, "task": args.task, "batch_size": args.batch_size, "seq_len": args.seq_len,
                           "dropout": args.dropout, "vocab": args.vocab, "threads": threads, "pinned_cpus": cpus,
                           "repeats": args.repeats, "infer_repeats": args.infer_repeats, "burst": args.burst,
                           "burst_warmup": args.burst_warmup,
                           "warmup": args.warmup, "quiet_wait": args.quiet_wait,
                           "quiet_threshold": args.quiet_threshold, "quiet_pressure": args.quiet_pressure,
                           "gemm_size": args.gemm_size, "quick": args.quick, "gpu": args.gpu,
                           "tf32": args.tf32, "reference_variants": args.reference_variants,
                           "reference_heads": args.reference_heads,
                           "label_rate": LABEL_RATE, "dtype": "float32", "precision": args.precision,
                           "optimizer": {"lr": 1e-4, "weight_decay": 0.01, "eps": 1e-6, "betas": [0.9, 0.999],
                                         "clip_norm": 1.0, "no_decay": "biases and LayerNorm"}},
              "machine": machine_info(args),
              "method": {"flops": FLOP_METHOD, "memory": MEMORY_METHOD,
                         "timing": "perf_counter around each step, after backend.synchronize(loss) and reading the "
                                   "loss to the host; libraries alternate in rounds (see the module docstring)",
                         "inference": "Mini-BERT: logits_all at all B*T positions (compiled); PyTorch: "
                                      "BertForMaskedLM(...).logits (all positions) under inference_mode (both "
                                      "references: inference is the same work for both); --task sequence: "
                                      "classify_logits_all against BertForSequenceClassification(...).logits",
                         "references": "* all-positions: BertForMaskedLM with labels (logits and loss at all "
                                       "B*T positions), as users run it; + same-work: the same model's bert "
                                       "(BertModel) and cls (MLM head) at the labelled rows only, the same "
                                       "cross-entropy, as Mini-BERT; each the faster of its attentions"},
              "results": {}}
    for b in args.skipped_backends:
        log(f"backend {b} not installed: skipped")
    try:
        for preset in args.presets:
            log(f"preset {preset}")
            report["results"][preset] = run_preset(preset, args, threads, cpus, log)
            Path(args.json).write_text(json.dumps({**report, "partial": preset != args.presets[-1]}, indent=1))
    except KeyboardInterrupt:
        # e.g. `timeout -s INT` from scripts/gpu_check.sh: report the presets that finished
        log("interrupted: reporting the presets that finished")
        report["interrupted"] = True
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["wall_s"] = time.perf_counter() - started
    text = format_report(report)
    print(text)
    if args.profile:
        for preset, res in report["results"].items():
            for name, lib in res["libraries"].items():
                if lib.get("profile"):
                    print(f"\n--- cProfile, {preset} / {name}, {args.profile} training steps ---\n{lib['profile']}")
    Path(args.json).write_text(json.dumps(report, indent=1))
    log(f"wrote {args.json}")
    failed = [e for res in report["results"].values() for e in res["errors"]]
    return 130 if report.get("interrupted") else (1 if failed else 0)
