"""``report.md`` of an evaluation: the results beside the paper's Table 1, the targets, warnings, timing."""

from __future__ import annotations

__all__ = ["report_markdown"]


def report_markdown(results: dict) -> str:
    """The Markdown report of :func:`~ebsd_keras.evaluation.run.evaluate_generator` results (or a loaded
    ``report.json``); warnings (e.g. a dictionary too coarse for the true-pattern floor) come right after the
    title."""
    body = _report_markdown_body(results)
    warnings = results.get("warnings") or []
    if not warnings:
        return body
    title, _, rest = body.partition("\n")
    block = "\n".join(["", "## Warnings", "", *[f"- **{w}**" for w in warnings], ""])
    return f"{title}\n{block}{rest}"


def _pm(stats: dict | None, digits: int = 3, unit: str = "") -> str:
    if not stats or stats.get("mean") is None:
        return "—"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}{unit}"


def _angles(stats: dict | None) -> str:
    if not stats or stats.get("mean") is None:
        return "—"
    return f"{stats['mean']:.3f}° ± {stats['std']:.3f}° (median {stats['median']:.3f}°, p95 {stats['p95']:.3f}°)"


def _pct(value) -> str:
    return "—" if value is None else f"{100.0 * value:.2f} %"


def _report_markdown_body(results: dict) -> str:
    label = results["label"]
    true_only = results.get("true_only", False)
    pix, idx = results["pixel"], results["indexing"]
    fl, fi = pix["true"], idx["true"]
    gp = pix.get(label, {})
    gi = idx.get(label, {})
    cfg = results["config"]
    ts = results["test_set"]
    dic = "; ".join(
        f"{kv} kV: {d['dictionary_size']:,} patterns at {d['resolution_deg']:.3g}°"
        + (f" (cubochoric N = {d['semi_edge_steps']})" if d.get("semi_edge_steps") else "")
        for kv, d in cfg["dictionary"].items()
    )
    lines = [
        f"# Fidelity report: {label if not true_only else 'true-pattern floor'}",
        "",
        f"Test set: `{ts['path']}` ({ts['format']}, split {ts['split']}), {ts['n']} of {ts['n_total']} patterns "
        f"(seed {ts['seed']}), voltages {', '.join(f'{v:g}' for v in ts['voltages_kv'])} kV.  ",
        f"Dictionary: {dic} — {cfg['dictionary_basis']}.  ",
        f"Refinement: {cfg['refiner'] if cfg['refine'] else 'off'}"
        + (
            f" (trust region ±{cfg['refine_settings']['bobyqa']['trust_region_deg']:g}°)"
            if cfg["refine"] and "bobyqa" in cfg.get("refine_settings", {})
            else ""
        )
        + ".",
        "",
        "## Pattern fidelity and orientation accuracy",
        "",
        "| metric | true patterns (floor) | paper (Table 1, CVAE) | target |"
        if true_only
        else f"| metric | {label} | true patterns (floor) | paper (Table 1, CVAE) | target |",
        "|---|---|---|---|" if true_only else "|---|---|---|---|---|",
    ]

    def row(name, model, floor, paper, target=""):
        cells = [name, floor, paper, target] if true_only else [name, model, floor, paper, target]
        lines.append("| " + " | ".join(cells) + " |")

    row("BCE per pattern (nats/pixel)", _pm(gp.get("bce"), 4), _pm(fl["bce"], 4), "0.541", "")
    row("optimal BCE (target entropy)", _pm(gp.get("optimal_bce"), 4), _pm(fl["optimal_bce"], 4), "0.503", "")
    row("BCE gap (generated − optimal)", _pm(gp.get("bce_gap"), 4), _pm(fl["bce_gap"], 4), "0.038", "≤ 0.01")
    row(
        "pixels within 15 % of the truth",
        _pct((gp.get("within_15pct") or {}).get("mean")),
        _pct(fl["within_15pct"]["mean"]),
        "> 80 %",
        "≥ 95 %",
    )
    row(
        "patterns with ≥ 80 % pixels within 15 %",
        _pct(gp.get("patterns_with_80pct_within")),
        _pct(fl["patterns_with_80pct_within"]),
        "",
        "",
    )
    row("NCC with the true pattern", _pm(gp.get("ncc"), 4), _pm(fl["ncc"], 4), "", "")
    row("DI error", _angles(gi.get("di_error_deg")), _angles(fi["di_error_deg"]), "0.650° ± 0.257°", "")
    kp_n = (fi.get("kikuchipy_refined_error_deg") or {}).get("n")
    for key, label, paper, target in (
        ("refined_error_deg", "refined DI error", "0.142° ± 0.061°", "mean ≤ 0.10°"),
        ("kikuchipy_refined_error_deg", f"kikuchipy-refined error ({kp_n} patterns)", "", ""),
        ("bobyqa_vs_kikuchipy_deg", "BOBYQA vs kikuchipy refinement", "", ""),
    ):
        if key in fi:
            row(label, _angles(gi.get(key)), _angles(fi[key]), paper, target)
    lines.append("")
    if results.get("target_check"):
        lines += ["## Targets for a compact model", "", "| target | value | pass |", "|---|---|---|"]
        for name, t in results["target_check"].items():
            bound = f"≤ {t['max']}" if "max" in t else f"≥ {t['min']}"
            lines.append(f"| {name} {bound} | {t['value']:.4g} | {'yes' if t['pass'] else 'NO'} |")
        lines.append("")
    variants = [k for k in pix if k not in ("true", label)]
    if variants:
        lines += [
            "## Other generators (pixel metrics)",
            "",
            "| generator | BCE | gap | within 15 % | NCC |",
            "|---|---|---|---|---|",
        ]
        for k in variants:
            p = pix[k]
            lines.append(
                f"| {k} | {_pm(p['bce'], 4)} | {_pm(p['bce_gap'], 4)} | {_pct(p['within_15pct']['mean'])} "
                f"| {_pm(p['ncc'], 4)} |"
            )
        lines.append("")
    if results.get("critic"):
        lines += [
            "## Critic / classifier",
            "",
            "| patterns | orientation error | within 5° | voltage MAE |",
            "|---|---|---|---|",
        ]
        for k, c in results["critic"].items():
            mae = c.get("voltage_mae_kv")
            lines.append(
                f"| {k} | {_angles(c['orientation_error_deg'])} | {_pct(c['fraction_within_5deg'])} | "
                f"{'—' if mae is None else f'{mae:.3f} kV'} |"
            )
        lines.append("")
    model = results.get("model")
    if model:
        lines += ["## Model", ""]
        if "params" in model:
            parts = ", ".join(
                f"{p} {model[f'{p}_params']:,}" for p in ("encoder", "decoder", "critic") if f"{p}_params" in model
            )
            lines.append(f"- parameters: {model['params']:,} ({parts})")
        if "throughput" in model:
            tp = model["throughput"]
            lines.append(f"- generation throughput: {tp['patterns_per_s']:.0f} patterns/s (batch {tp['batch_size']})")
        lines.append("")
    tm = results["timing"]
    lines += ["## Timing (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k.removesuffix('_s')} | {v:.1f} |" for k, v in tm.items() if isinstance(v, (int, float))]
    lines += [
        "",
        "## Figures",
        "",
        "`patterns.png` (real / generated / difference), `pixel_fraction_kde.png`, `pixel_histogram.png`, "
        "`bce_histogram.png`, `orientation_error_histogram.png`.",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items() if v)}.",
        "",
    ]
    return "\n".join(lines)
