"""The text report printed after a run (the JSON report holds everything it shows, and more)."""
from __future__ import annotations

import math

from bench.flops import FLOP_METHOD
from bench.probes import MEMORY_METHOD


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def _range(t):
    return f"[{t['min_ms']:.0f}..{t['max_ms']:.0f}]"


def _paired(r):
    return (f"{r['train_time_paired_median']:.2f} [{r['train_time_paired_min']:.2f}.."
            f"{r['train_time_paired_max']:.2f}]" if "train_time_paired_median" in r else "-")


def _references(res) -> str:
    """Which library is which reference, said in words."""
    if res.get("task", "mlm") != "mlm":
        return (f"reference (*) = {res.get('reference') or 'none'} (BertForSequenceClassification: the same work "
                "as Mini-BERT's step)")
    return (f"references: all-positions (*) = {res.get('reference') or 'none'} (BertForMaskedLM as users run it, "
            f"logits at all B*T positions), same-work (+) = {res.get('reference_same_work') or 'none'} (its "
            "BertModel + MLM head at the labelled rows only, as Mini-BERT)")


def format_report(report) -> str:
    m, s = report["machine"], report["settings"]
    lines = []
    where = (f"GPU: {'; '.join(m.get('gpus', [])) or 'unknown'}" if s["gpu"] else
             f"CPU: {m['cpu_model']}, {m['usable_cpus']} usable cores, {s['threads']} threads per library")
    lines.append(f"Mini-BERT vs PyTorch  |  {where}  |  load avg {m['loadavg_start'][0]:.1f} at start, "
                 f"{m.get('loadavg_end', [float('nan')])[0]:.1f} at end")
    precision = s.get("precision", "fp32")
    trains_in = ("float32" if precision == "fp32" else
                 f"training in {precision} mixed precision (float32 master weights; PyTorch under torch.autocast), "
                 "inference in float32")
    lines.append(f"batch {s['batch_size']}, dropout {s['dropout']}, vocab {s['vocab']}, {trains_in}; {s['repeats']} timed "
                 f"steps per library in rounds of {s['burst']} (each after {s['burst_warmup']} untimed), after "
                 f">= {s['warmup']} warm-up; "
                 f"OPENBLAS_CORETYPE={m['OPENBLAS_CORETYPE'] or 'unset'}")
    for preset, res in report["results"].items():
        c, f, libs = res["config"], res["flops"], res["libraries"]
        clamp = (f" (asked {res['seq_len_requested']}: clamped to max_position)" if res["seq_len_clamped"] else "")
        lines.append("")
        task = res.get("task", "mlm")
        lines.append(f"== {preset}{'' if task == 'mlm' else f' (task {task})'}: L={c['num_layers']} H={c['hidden_size']} A={c['num_heads']} "
                     f"I={c['intermediate_size']} V={c['vocab_size']}  |  B={res['batch']} T={res['seq_len']}{clamp}"
                     f"  |  {res['tokens']} tokens, {res['labelled_rows']} "
                     f"{'labelled' if task == 'mlm' else '[CLS] rows with a label'}")
        lines.append(f"   useful GFLOP: train step {f['train']['total'] / 1e9:.2f} (encoder dense "
                     f"{3 * f['train']['encoder_dense_fwd'] / 1e9:.2f}, attention "
                     f"{3 * f['train']['attention_fwd'] / 1e9:.2f}, head {3 * f['train']['head_fwd'] / 1e9:.2f}), "
                     f"inference {f['inference']['total'] / 1e9:.2f}")
        lines.append(f"   {_references(res)}")
        trained = [(n, lib) for n, lib in libs.items() if lib.get("train", {}).get("median_ms")]
        if trained:
            lines.append(f"   {'TRAIN STEP':<24}{'ms/step':>9} {'[min..max]':>14}{'tok/s':>7}{'GFLOP/s':>8}"
                         f"{'%peak':>6}{'x torch':>8}{'paired x all (*)':>20}{'paired x same (+)':>20}"
                         f"{'quiet x':>8}{'others':>7}{'psi':>5}{'noisy':>6}")
            for name, lib in trained:
                t, r = lib["train"], lib.get("vs_reference", {})
                peak = 100 * t["fraction_of_gemm_peak"] if "fraction_of_gemm_peak" in t else None
                mark = (" *" if name == res.get("reference") else
                        " +" if name == res.get("reference_same_work") else "")
                lines.append(
                    f"   {name + mark:<24}{t['median_ms']:>9.1f} "
                    f"{_range(t):>14}{t['tokens_per_s']:>7.0f}{t['gflops']:>8.1f}{_fmt(peak, '.0f'):>5}%"
                    f"{_fmt(r.get('train_time'), '.2f'):>8}{_paired(r):>20}{_paired(lib.get('vs_same_work', {})):>20}"
                    f"{_fmt(r.get('train_time_paired_quiet_median'), '.2f'):>8}{t['foreign_cores_median']:>7.2f}"
                    f"{_fmt(t['cpu_pressure_median'], '.2f'):>5}"
                    f"{str(t['noisy_bursts']) + '/' + str(len(t['bursts'])):>6}")
            mem_label = "dev MB" if s["gpu"] else "mem MB"
            lines.append(f"   {'RESOURCES':<24}{'GEMM GF/s':>10}{'cpu%':>6}{'sys%':>5}{'faults':>8}{mem_label:>8}"
                         f"{'x torch':>8}{'1st step s':>11}{'scatter ms':>11}{'% of step':>10}")
            for name, lib in trained:
                t, r, mem = lib["train"], lib.get("vs_reference", {}), lib.get("memory", {})
                mem_b = (mem.get("device_peak") or {}).get("bytes") if s["gpu"] else mem.get("peak_delta")
                mem_r = r.get("device_memory_peak") if s["gpu"] else r.get("memory_peak_delta")
                sc = lib.get("scatter", {})
                lines.append(
                    f"   {name:<24}{_fmt(lib.get('gemm', {}).get('gflops_best'), '.0f'):>10}"
                    f"{100 * t['cpu_utilisation']:>5.0f}%"
                    f"{_fmt(100 * t['sys_fraction_of_cpu'] if 'sys_fraction_of_cpu' in t else None, '.0f'):>4}%"
                    f"{_fmt(t.get('page_faults_median'), '.0f'):>8}{_fmt(mem_b / 2**20 if mem_b else None, '.0f'):>8}"
                    f"{_fmt(mem_r, '.2f'):>8}{lib['first_step_s']:>11.2f}"
                    f"{_fmt(sc.get('median_ms'), '.2f'):>11}"
                    f"{_fmt(100 * sc['share_of_step'] if 'share_of_step' in sc else None, '.1f'):>9}%")
        inferred = [(n, lib) for n, lib in libs.items() if lib.get("inference", {}).get("median_ms")]
        if inferred:
            what = "INFERENCE (B*T logits)" if task == "mlm" else "INFERENCE (B logits)"
            lines.append(f"   {what:<24}{'ms':>9} {'[min..max]':>14}{'tok/s':>7}{'GFLOP/s':>8}"
                         f"{'%peak':>6}{'x torch':>8}{'paired':>20}{'':>8}{'others':>7}")
            for name, lib in inferred:
                t, r = lib["inference"], lib.get("vs_reference", {})
                peak = 100 * t["fraction_of_gemm_peak"] if "fraction_of_gemm_peak" in t else None
                lines.append(
                    f"   {name:<24}{t['median_ms']:>9.1f} {_range(t):>14}{t['tokens_per_s']:>7.0f}{t['gflops']:>8.1f}"
                    f"{_fmt(peak, '.0f'):>5}%{_fmt(r.get('inference_time'), '.2f'):>8}"
                    f"{_fmt(r.get('inference_time_paired_median'), '.2f'):>20}{'':>8}{t['foreign_cores_median']:>7.2f}")
        losses = [f"{name} {lib['warmup_losses'][0]:.3f}" for name, lib in libs.items()]
        if losses:
            chance = math.log(c["vocab_size"] if task == "mlm" else c["num_labels"])
            lines.append(f"   first-step loss (sanity, ~ln {'V' if task == 'mlm' else 'C'} = {chance:.2f}): "
                         f"{', '.join(losses)}")
        for name, lib in libs.items():
            r = lib.get("vs_fp32")
            if r:
                paired = r.get("train_time_paired_median")
                lines.append(f"   {precision} against fp32, {name} (its own fp32 step, {name}-fp32: the same work): "
                             f"step time x{_fmt(paired, '.2f')} paired [{_fmt(r.get('train_time_paired_min'), '.2f')}.."
                             f"{_fmt(r.get('train_time_paired_max'), '.2f')}], so {_fmt(None if not paired else 1 / paired, '.2f')}x "
                             f"the fp32 speed; memory x{_fmt(r.get('memory_peak_delta') or r.get('device_memory_peak'), '.2f')}")
        for name, lib in libs.items():
            check = lib["info"].get("same_work_check")
            if check:
                lines.append(f"   same-work check ({name}, initial weights, no dropout): loss with the head at the "
                             f"labelled rows {check['loss_labelled_rows']:.6f}, BertForMaskedLM at all positions "
                             f"{check['loss_all_positions']:.6f} (|diff| {check['abs_diff']:.1e})")
        noisy = [n for n, lib in trained if lib["train"]["noisy_bursts"] > len(lib["train"]["bursts"]) / 2]
        if noisy:
            lines.append(f"   !! the machine was busy during most bursts of {', '.join(noisy)} (threads waited for a "
                         "CPU; see psi and others): treat these times as upper bounds, compare the paired "
                         "and quiet ratios, or rerun when the machine is idle")
        for err in res["errors"]:
            lines.append(f"   !! {err['library']}: {err['error'].splitlines()[0] if err['error'] else ''}")
    lines.append("")
    lines.append(
        "Columns: ms/step = median of the timed steps [min..max]; GFLOP/s = useful FLOPs / median; %peak = GFLOP/s "
        f"/ GEMM GF/s, the best float32 {s['gemm_size']}^3 matmul in the same worker (same library and threads); "
        "x torch = median / the all-positions reference's median (< 1 = faster than PyTorch); paired x all = median "
        "[range] over rounds of (burst median / the all-positions reference's (*) burst median in the same round); "
        "paired x same = the same against the same-work reference (+): PyTorch computing only what Mini-BERT "
        "computes (the MLM head at the labelled rows), the honest algorithm-for-algorithm ratio; quiet x = "
        "paired x all over rounds where neither burst was noisy; inference is against the all-positions reference "
        "(both compute logits everywhere); others = median cores used by other processes during its bursts (from "
        "/proc/stat minus the worker's own CPU time); psi = median fraction of its bursts during which some "
        "runnable thread waited for a CPU (/proc/pressure/cpu); noisy = bursts with psi >= "
        f"{s['quiet_pressure']} (without PSI: others >= {s['quiet_threshold']} cores); cpu% = worker CPU time / "
        "(wall x threads) during the steps; sys% = the kernel's share of that CPU time; "
        "faults = page faults per step (fresh pages the kernel maps and zeroes); "
        f"{'dev MB = device peak' if s['gpu'] else 'mem MB = peak RSS growth'} (x torch = its ratio); 1st step = "
        "the first step (JAX: compilation); scatter = the word-embedding gradient scatter-add [V,H] += [B*T,H] "
        "alone, and its share of the median step.")
    lines.append("FLOPs: " + FLOP_METHOD)
    lines.append("Memory: " + MEMORY_METHOD)
    return "\n".join(lines)
