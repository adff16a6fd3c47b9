"""Statistics over the timed bursts: medians, rates, fractions of peak, quiet bursts, ratios to the reference."""
from __future__ import annotations

import statistics


def _stats_ms(times):
    ms = sorted(1000.0 * t for t in times)
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1], "p25_ms": q[0], "p75_ms": q[2],
            "n": len(ms)}


def _noisy(burst, result) -> bool:
    """A burst during which the machine was not ours: CPU pressure (PSI: some runnable thread waited for a CPU)
    for at least --quiet-pressure of its time, or, without PSI, other processes using --quiet-threshold cores."""
    if burst.get("cpu_pressure") is not None:
        return burst["cpu_pressure"] >= result["quiet_pressure"]
    return burst["foreign_cores"] >= result["quiet_threshold"]


def summarize(result) -> None:
    """Medians, rates, fractions of peak, and ratios against the two references, in place: result["reference"]
    (all-positions: the faster PyTorch without -labelled; ratios in each library's "vs_reference") and
    result["reference_same_work"] (the faster -labelled one, the head at the labelled rows only; "vs_same_work").
    """
    libs = result["libraries"]
    flops = result["flops"]
    tokens = result["tokens"]
    for name, lib in libs.items():
        if lib.get("gemm"):
            g = lib["gemm"]
            g.update(_stats_ms(g["times_s"]))
            g["gflops_best"] = 2.0 * g["size"] ** 3 / (g["min_ms"] / 1000) / 1e9
            g["gflops_median"] = 2.0 * g["size"] ** 3 / (g["median_ms"] / 1000) / 1e9
        for store, total in (("train", flops["train"]["total"]), ("inference", flops["inference"]["total"])):
            slot = lib.get(store)
            if not slot or not slot.get("times_s"):
                continue
            slot.update(_stats_ms(slot["times_s"]))
            seconds = slot["median_ms"] / 1000.0
            slot["tokens_per_s"] = tokens / seconds
            slot["gflops"] = total / seconds / 1e9
            if lib.get("gemm"):
                slot["fraction_of_gemm_peak"] = slot["gflops"] / lib["gemm"]["gflops_best"]
            cores = max(1, result.get("threads") or 1)
            slot["cpu_utilisation"] = statistics.median(
                c / (t * cores) for c, t in zip(slot["cpu_s"], slot["times_s"]) if t > 0)
            if slot.get("sys_s"):
                slot["sys_fraction_of_cpu"] = sum(slot["sys_s"]) / max(sum(slot["cpu_s"]), 1e-9)
                slot["page_faults_median"] = statistics.median(slot["page_faults"])
            quiet = [b for b in slot["bursts"] if not _noisy(b, result)]
            slot["foreign_cores_median"] = statistics.median(b["foreign_cores"] for b in slot["bursts"])
            psi = [b["cpu_pressure"] for b in slot["bursts"] if b.get("cpu_pressure") is not None]
            slot["cpu_pressure_median"] = statistics.median(psi) if psi else None
            slot["noisy_bursts"] = len(slot["bursts"]) - len(quiet)
            slot["quiet_median_ms"] = (1000 * statistics.median(t for b in quiet for t in b["times_s"])
                                       if quiet else None)
            if slot["quiet_median_ms"]:
                slot["gflops_quiet"] = total / (slot["quiet_median_ms"] / 1000) / 1e9
        if lib.get("scatter") and lib.get("train", {}).get("median_ms"):
            sc, train = lib["scatter"], lib["train"]
            sc.update(_stats_ms(sc["times_s"]))
            sc["share_of_step"] = sc["median_ms"] / (train.get("quiet_median_ms") or train["median_ms"])
        if lib["kind"] == "reference" and not name.endswith("-labelled") and lib.get("train", {}).get("median_ms"):
            # the FLOPs BertForMaskedLM executes: the head at all B*T positions (a -labelled one executes the useful)
            lib["train"]["gflops_executed"] = (flops["pytorch_train_executed"]["total"]
                                               / (lib["train"]["median_ms"] / 1000) / 1e9)
    for slot, same_work in (("reference", False), ("reference_same_work", True)):
        candidates = [n for n, lib in libs.items() if lib["kind"] == "reference"
                      and n.endswith("-labelled") == same_work and lib.get("train", {}).get("median_ms")]
        # the faster PyTorch attention; judged on quiet bursts where every candidate has some
        key = ("quiet_median_ms" if all(libs[n]["train"].get("quiet_median_ms") for n in candidates)
               else "median_ms")
        result[f"{slot}_chosen_by"] = key
        result[slot] = min(candidates, key=lambda n: libs[n]["train"][key]) if candidates else None
    for slot, field in (("reference", "vs_reference"), ("reference_same_work", "vs_same_work")):
        if result[slot] is not None:
            for lib in libs.values():
                lib[field] = _ratios(lib, libs[result[slot]], result)
    for name, lib in libs.items():       # --precision bf16/fp16: each backend against its own fp32 entry
        baseline = libs.get(f"{name}-fp32")
        if lib["kind"] == "minibert" and baseline and baseline.get("train", {}).get("median_ms"):
            lib["vs_fp32"] = _ratios(lib, baseline, result)


def _ratios(lib, ref, result) -> dict:
    """lib's times, memory and GEMM peak over the reference `ref`'s: plain, paired by round, quiet rounds."""
    ratios = {}
    ref_bursts = {b["round"]: b["median_s"] for b in ref["train"]["bursts"]}
    for store in ("train", "inference"):
        if lib.get(store, {}).get("median_ms") and ref.get(store, {}).get("median_ms"):
            ratios[f"{store}_time"] = lib[store]["median_ms"] / ref[store]["median_ms"]
    paired = [b["median_s"] / ref_bursts[b["round"]] for b in lib.get("train", {}).get("bursts", [])
              if b["round"] in ref_bursts]
    if paired:
        ratios["train_time_paired_median"] = statistics.median(paired)
        ratios["train_time_paired_min"], ratios["train_time_paired_max"] = min(paired), max(paired)
    ref_quiet = {b["round"]: b["median_s"] for b in ref["train"]["bursts"] if not _noisy(b, result)}
    paired = [b["median_s"] / ref_quiet[b["round"]] for b in lib.get("train", {}).get("bursts", [])
              if b["round"] in ref_quiet and not _noisy(b, result)]
    ratios["train_time_paired_quiet_median"] = statistics.median(paired) if paired else None
    ratios["train_time_paired_quiet_rounds"] = len(paired)
    if lib.get("train", {}).get("quiet_median_ms") and ref["train"].get("quiet_median_ms"):
        ratios["train_time_quiet"] = lib["train"]["quiet_median_ms"] / ref["train"]["quiet_median_ms"]
    ref_ib = {b["round"]: b["median_s"] for b in ref.get("inference", {}).get("bursts", [])}
    paired = [b["median_s"] / ref_ib[b["round"]] for b in lib.get("inference", {}).get("bursts", [])
              if b["round"] in ref_ib]
    if paired:
        ratios["inference_time_paired_median"] = statistics.median(paired)
    mem, ref_mem = lib.get("memory", {}), ref.get("memory", {})
    if mem.get("peak_delta") and ref_mem.get("peak_delta"):
        ratios["memory_peak_delta"] = mem["peak_delta"] / ref_mem["peak_delta"]
    if (mem.get("device_peak") or {}).get("bytes") and (ref_mem.get("device_peak") or {}).get("bytes"):
        ratios["device_memory_peak"] = mem["device_peak"]["bytes"] / ref_mem["device_peak"]["bytes"]
    if lib.get("gemm") and ref.get("gemm"):
        ratios["gemm_peak"] = lib["gemm"]["gflops_best"] / ref["gemm"]["gflops_best"]
    return ratios
