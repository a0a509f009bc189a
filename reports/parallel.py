"""Text renderings of the sharded reference: ``costmodel profile --tp/--pp`` and the parallel
cases of ``costmodel validate``. Counts exact (two integers that agree), times in ms."""

from __future__ import annotations

from .text import render


def _n(x) -> str:
    return "-" if x is None else f"{x:,}"


def _eq(a, b) -> str:
    return "=" if a == b else f"{b - a:+,}"


def _tokens_line(r) -> str:
    if r.tokens_match is None:
        return "tokens: unsharded reference not run"
    return ("tokens: sharded greedy generation equals the unsharded model's (same seed)" if r.tokens_match
            else "tokens: MISMATCH: sharded greedy generation differs from the unsharded model's")


def parallel_table(r) -> str:
    """Per rank and phase: matmul FLOPs, KV bytes and collective payload bytes, analytic beside measured."""
    w = r.workload
    lines = [f"{r.spec.name}: tp={r.split.tp} x pp={r.split.pp}{f' x ep={r.split.ep}' if r.split.ep > 1 else ''}"
             f" = {r.split.world} ranks on "
             f"{'nccl' if r.device == 'cuda' else 'gloo'} ({r.device}), {r.attention} attention, batch {w.batch}, "
             f"prompt {w.prompt}, gen {w.gen}, {w.act_dtype}; {r.seconds:.1f} s with start-up", ""]
    rows = []
    for rk in r.ranks:
        layers = f"{rk.layers.start}-{rk.layers.stop - 1}" if len(rk.layers) else "-"
        for p in ("prefill", "decode"):
            d = rk.phase_dict(p)
            comm = d["communication"]
            a = sum(c["analytic_bytes"] for c in comm.values())
            m = sum(c["measured_bytes"] for c in comm.values())
            s = sum(c["measured_seconds"] for c in comm.values())
            kinds = " ".join(f"{k}x{c['calls']}" for k, c in comm.items() if c["calls"])
            rows.append([str(rk.rank), f"{rk.stage}/{rk.tp_rank}", layers, p,
                         _n(d["analytic_matmul_flops"]), _n(d["counted_matmul_flops"]),
                         _eq(d["analytic_matmul_flops"], d["counted_matmul_flops"]),
                         _n(d["analytic_kv_cache_bytes"]), _n(d["kv_cache_bytes"]),
                         _eq(d["analytic_kv_cache_bytes"], d["kv_cache_bytes"]),
                         _n(a), _n(m), _eq(a, m), f"{s * 1e3:.2f}", kinds or "-"])
    lines.append(render(["rank", "stage/tp", "layers", "phase", "FLOPs analytic", "FLOPs counted", "diff",
                         "KV B analytic", "KV B measured", "diff", "comm B analytic", "comm B measured",
                         "diff", "comm ms", "collectives"], rows,
                        align=["r", "l", "l", "l"] + ["r"] * 10 + ["l"]))
    lines += ["", "communication, all ranks:"]
    for p, c in r.communication().items():
        lines.append(f"  {p}: payload {c['analytic_bytes']:,} B analytic, {c['measured_bytes']:,} B measured "
                     f"({'equal' if c['match'] else 'MISMATCH'}); ring wire {c['analytic_ring_wire_bytes']:,} B; "
                     f"{c['measured_seconds'] * 1e3:.2f} ms in collectives (slowest rank)")
    lines += ["", "Matmul FLOPs (2 per multiply-add) compared per op, layer and decode step inside each rank; "
              "decode sums the gen - 1 steps; KV bytes of each rank's cache tensors; communication bytes are "
              "the payloads of the collective calls (all-reduce buffer, all-gather own shard, sent / "
              "received activations, broadcast token ids).", _tokens_line(r)]
    if r.split.ep > 1:
        lines.insert(-1, "Under ep each rank's routed-expert FLOPs follow the seeded router (the per-rank "
                         "analytic figure is the uniform 1 / ep share); their sum over the ranks is compared, "
                         "per pass, layer and op; dispatch (all-gather) and combine (reduce-scatter) payloads "
                         "depend on shapes only.")
    for m in r.mismatches:
        lines.append(f"MISMATCH {m}")
    lines.append("all figures equal the analytic split" if r.ok else f"{len(r.mismatches)} mismatches")
    return "\n".join(lines)


def parallel_cases_table(results) -> str:
    rows = []
    for case, r in results:
        comm = r.communication()
        ranks = r.ranks
        fl_ok = all(d["analytic_matmul_flops"] == d["counted_matmul_flops"]
                    for rk in ranks for d in (rk.phase_dict("prefill"), rk.phase_dict("decode")))
        kv_ok = all(rk.kv_cache_bytes == rk.analytic_kv_cache_bytes for rk in ranks)
        rows.append([case.name, case.model, f"{r.split.tp}x{r.split.pp}",
                     _n(sum(rk.phase_dict("prefill")["counted_matmul_flops"] for rk in ranks)),
                     _n(sum(rk.phase_dict("decode")["counted_matmul_flops"] for rk in ranks)),
                     "=" if fl_ok else "MISMATCH", "=" if kv_ok else "MISMATCH",
                     _n(comm["prefill"]["measured_bytes"] + comm["decode"]["measured_bytes"]),
                     "=" if all(c["match"] for c in comm.values()) else "MISMATCH",
                     {True: "same", False: "DIFFER", None: "-"}[r.tokens_match],
                     "ok" if r.ok else "MISMATCH"])
    lines = [render(["parallel case", "model", "tp x pp", "prefill FLOPs", "decode FLOPs", "per-rank FLOPs",
                     "per-rank KV", "comm bytes", "vs analytic", "tokens", "result"], rows,
                    align=["l", "l", "l"] + ["r"] * 7 + ["l"])]
    lines.append("FLOPs summed over ranks (each rank compared per op, layer and step); comm bytes: collective "
                 "payloads, all ranks, both phases; tokens: sharded greedy vs the unsharded model.")
    for case, r in results:
        for m in r.mismatches:
            lines.append(f"MISMATCH {case.name}: {m}")
    return "\n".join(lines)


def collectives_lines(profile: dict) -> list[str]:
    """``calibrate --collectives``: measured vs the fitted ring model, per message size."""
    c = profile["calibration"]["collectives"]
    rows = [[f"{p['bytes']:,}", f"{p['seconds'] * 1e6:,.1f}", f"{p['predicted_seconds'] * 1e6:,.1f}",
             f"{p['abs_error_pct']:.1f}"] for p in c["points"]]
    return [f"all-reduce on {c['ranks']} ranks ({c['backend']}, {c['dtype']}), {c['seconds_taken']:.1f} s:",
            render(["message bytes", "measured us", "ring model us", "abs error %"], rows),
            f"fit: {c['model']}",
            f"  interconnect_bandwidth_bytes_per_s {profile['interconnect_bandwidth_bytes_per_s'] / 1e9:,.3f} GB/s, "
            f"link_latency_s {profile['link_latency_s'] * 1e6:,.1f} us (interconnect_efficiency 1)",
            f"  abs error: median {c['median_abs_error_pct']:.1f} %, p90 {c['p90_abs_error_pct']:.1f} %"]
