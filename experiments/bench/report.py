"""The suite's outputs: ``bench_suite.json``, the markdown report ``bench_suite.md`` and the plots."""

from __future__ import annotations

import json
import math
import os

import numpy as np


def _load(d) -> str:
    """``start [..] -> end [..]`` from a part's ``loadavg`` record."""
    if not isinstance(d, dict):
        return str(d)
    return f"Load average {d.get('start')} at its start, {d.get('end')} at its end"


def _f(v, fmt: str = ".2f", na: str = "-") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return na
    return format(v, fmt)


def models_section(res: dict) -> list[str]:
    """Part 1: models, as markdown lines."""
    lines: list[str] = []
    m = res["models"]
    lines += [
        f"## 1. Models ({m['data']})",
        "",
        f"{_load(m['loadavg'])}. float32 matmul ceiling measured in this run, "
        f"before/after the models: {_f(m['matmul_ceiling_before_after'][0], '.0f')}/"
        f"{_f(m['matmul_ceiling_before_after'][1], '.0f')} GFLOP/s; ratios use the larger, "
        f"{_f(m['matmul_ceiling_gflops_per_s'], '.0f')}.",
        "",
        "| model | params | compile train (s) / fit (s) | train users/s | train GFLOP/s (% ceiling) "
        "| compile eval (s) | eval ms/user | eval GFLOP/s (% ceiling) | peak RSS (MB) | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in m["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | - | - | - | - | - | - | - | - | {r['status']} |")
            continue
        comp = (f"fit {_f(r['fit_s'])}" if r["kind"] == "closed-form"
                else _f(r.get("compile_train_s")))
        tr = (f"{_f(r['train_gflops_per_s'], '.1f')} ({_f(100 * r['train_ceiling_fraction'], '.0f')} %)"
              if "train_gflops_per_s" in r else "-")
        ev = f"{_f(r['eval_gflops_per_s'], '.1f')} ({_f(100 * r['eval_ceiling_fraction'], '.0f')} %)"
        lines.append(
            f"| {r['label']} | {r['params']:,} | {comp} | {_f(r.get('train_users_per_s'), '.0f')} "
            f"| {tr} | {_f(r['compile_eval_s'])} | {_f(r['eval_ms_per_user'], '.3f')} | {ev} "
            f"| {_f(r['peak_rss_mb'], '.0f')} | ok |"
        )
    t = m.get("target")
    if t:
        how = "a full epoch" if t["full_epoch"] else "a few steps, not a full epoch"
        lines += ["", f"**Target** ({t['what']}; measured on {t['data']}, {how}): "
                  f"{100 * t['fraction']:.0f} % of the ceiling, **{'met' if t['met'] else 'not met'}**"
                  + (" (quick mode: not the target's data set)" if res["quick"] else "") + "."]
    for r in m["rows"]:
        if "eval_chain_tflop" in r:
            lines += ["", f"{r['label']}'s reverse chain counted by hand (XLA's cost analysis counts "
                      f"a scan body once): {_f(r['eval_chain_tflop'], '.3f')} TFLOP per evaluation "
                      f"({r['eval_chain_path']} chain), {_f(r['eval_chain_gflops_per_s'], '.1f')} "
                      f"GFLOP/s ({_f(100 * r['eval_chain_ceiling_fraction'], '.0f')} % of the ceiling)."]
    ref = m.get("reference")
    if ref:
        rf = ref["reference"]
        caveat = "" if ref["real_data"] and ref["full_epoch"] else (
            " Not comparable as measured: " + ", ".join(
                w for w, bad in (("not ML-1M clean", not ref["real_data"]),
                                 ("epoch extrapolated from a few steps", not ref["full_epoch"])) if bad) + ".")
        lines += [
            "", "DiffRec against the PyTorch reference (`shared/specs/diffrec.md` section 14, measured on "
            "the 2-core CPU, quiet):", "",
            "| quantity | diffrec_jax | PyTorch reference | reference / ours |",
            "| --- | --- | --- | --- |",
            f"| training epoch (s) | {_f(ref['epoch_s'])} | {rf['epoch_s_2threads']} (2 threads), "
            f"{rf['epoch_s_1thread']} (1 thread) | {_f(ref['epoch_speedup_vs_2threads'], '.1f')}x, "
            f"{_f(ref['epoch_speedup_vs_1thread'], '.1f')}x |",
            f"| full evaluation, valid + test (s) | {_f(ref['eval_s'])} | {rf['eval_s'][0]}-{rf['eval_s'][1]} "
            f"| {_f(min(ref['eval_speedup']), '.1f')}-{_f(max(ref['eval_speedup']), '.1f')}x |",
        ]
        if caveat:
            lines += ["", caveat.strip()]
    lines += ["", "Training throughput: users per second over the timed steps (median of repeats, "
              "after a warm-up); evaluation: full ranking of every user (valid + test share one "
              "score pass) divided by the users. Peak RSS is the process's high-water mark reset "
              "before each model (it includes the dataset, the runtime and whatever earlier models "
              "left in JAX's caches).", ""]
    return lines


def steps_section(res: dict) -> list[str]:
    """Part 2: accuracy against reverse steps, as markdown lines."""
    lines: list[str] = []
    s = res["steps"]
    lines += [
        f"## 2. Accuracy against reverse steps ({s['data']}; {s['users']} users)",
        "",
        f"Parameters: {s['params_source']}. {_load(s['loadavg'])}. n steps run "
        "`t = n-1 .. 0` from the user's row; *projected* is the library's fast path on the "
        "truncated schedule, *generic* is `samplers.ancestral_sample(start_step=n-1, noise=False)`.",
        "",
        f"| n | test R@20 | test N@20 | eval s ({s.get('primary_path', 'projected')}) | ms/user "
        f"| eval s (generic) | generic / {s.get('primary_path', 'projected')} | max metric diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['n']} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | {_f(r['eval_s'])} "
            f"| {_f(r['eval_ms_per_user'], '.3f')} | {_f(r.get('generic_eval_s'))} "
            f"| {_f(r.get('generic_over_projected_time'), '.1f')} "
            f"| {_f(r.get('generic_max_abs_metric_diff'), '.1e')} |"
        )
    x = s["x0_t0"]
    lines += [f"| x0 at t=0 (one denoiser call) | {x['recall@20']:.4f} | {x['ndcg@20']:.4f} "
              f"| {_f(x['eval_s'])} | {_f(x['eval_ms_per_user'], '.3f')} | - | - | - |", ""]
    full = s["rows"][-1]
    if full["recall@20"] > 0:
        lines += [
            f"The x0 prediction at t=0 reaches {100 * x['recall@20'] / full['recall@20']:.1f} % of "
            f"the Recall@20 and {100 * x['ndcg@20'] / max(full['ndcg@20'], 1e-12):.1f} % of the "
            f"NDCG@20 of n = {full['n']} steps, in {x['eval_s'] / full['eval_s']:.2f}x its "
            f"evaluation time ({s.get('primary_path', 'projected')} path; same run).", ""]
    lines += ["![steps](steps.png)", ""]
    return lines


def scaling_section(res: dict) -> list[str]:
    """Part 3: cost growth, as markdown lines."""
    lines: list[str] = []
    sc = res["scaling"]
    st = sc["settings"]
    lines += [
        "## 3. Cost growth on synthetic data",
        "",
        f"Model: {sc['model']}. Data: {sc['data']}. Training batch {st['batch']} users, "
        f"evaluation batch {st['eval_batch']} users, top-{st['k']} with the exact chunked top-k "
        f"above {st['chunk_size']} items. The items axis keeps {sc['fixed_users_on_items_axis']} "
        f"users; the users axis keeps {sc['fixed_items_on_users_axis']} items. Per-user costs are "
        "medians over random user batches; epoch and full-evaluation times are those costs x U. "
        f"{_load(sc['loadavg'])}.",
        "",
    ]
    for axis in ("items", "users"):
        a = sc[f"{axis}_axis"]
        lines += [
            f"### {axis} axis",
            "",
            "| users | items | params | train us/user | train GFLOP/s | eval us/user | eval GFLOP/s "
            "| compile train/eval (s) | peak RSS (MB) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for p in a["points"]:
            lines.append(
                f"| {p['users']:,} | {p['items']:,} | {p['params']:,} "
                f"| {_f(p['train_us_per_user'], '.1f')} "
                f"| {_f(p['train_gflops_per_s'], '.1f')} | {_f(p['eval_us_per_user'], '.1f')} "
                f"| {_f(p['eval_gflops_per_s'], '.1f')} | {_f(p['compile_train_s'], '.1f')}/"
                f"{_f(p['compile_eval_s'], '.1f')} | {_f(p['peak_rss_mb'], '.0f')} |"
            )
        lines.append("")
        for cost, fit in a["fits"].items():
            lines.append(
                f"- {cost} ~ {axis}^a: a = {_f(fit['all']['exponent'], '.2f')} over all "
                f"{fit['all']['n_points']} points (R² {_f(fit['all']['r2'], '.3f')}), "
                f"a = {_f(fit['largest_3']['exponent'], '.2f')} over the largest 3"
            )
        if a["points"]:
            big = a["points"][-1]
            lines.append(
                f"- at {big['users']:,} users x {big['items']:,} items: a training epoch would take "
                f"about {_f(big['epoch_s_est'], '.1f')} s and a full evaluation "
                f"{_f(big['full_eval_s_est'], '.1f')} s (per-user cost x users)"
            )
        if a["stopped"]:
            lines.append(f"- stopped: {a['stopped']}")
        lines.append("")
    lines += ["![scaling](scaling.png)", ""]
    return lines


def topk_section(res: dict) -> list[str]:
    """Part 4: top-k, as markdown lines."""
    lines: list[str] = []
    tk = res["topk"]
    chunk_cols = [f"chunked_{c}" for c in tk["chunks"]]
    lines += [
        f"## 4. Top-k over large item sets (batch {tk['batch']} users, k = {tk['k']})",
        "",
        f"{_load(tk['loadavg'])}. Times in ms (median); ratios are to `lax.top_k` in this run. "
        "Approximate recall is measured against the exact top-k. *materialised*: `top_k(h W + b)`; "
        "*streamed*: a scan over item chunks of `W` that never holds the `[B, I]` scores.",
        "",
        "| items | lax.top_k | " + " | ".join(f"chunked ({c}) / ratio" for c in tk["chunks"])
        + " | approx_max_k / ratio | approx recall | materialised score+top-k | streamed (chunk) "
        "| scores MB materialised / streamed |",
        "| --- | --- | " + " | ".join("---" for _ in chunk_cols) + " | --- | --- | --- | --- | --- |",
    ]
    for r in tk["rows"]:
        cells = []
        for c in chunk_cols:
            if f"{c}_ms" in r:
                cells.append(f"{_f(r[c + '_ms'], '.1f')} / {_f(r[c + '_over_lax'], '.1f')}x"
                             + ("" if r[c + "_exact"] else " (NOT exact)"))
            else:
                cells.append("- (chunk >= items)")
        lines.append(
            f"| {r['items']:,} | {_f(r['lax_top_k_ms'], '.1f')} | " + " | ".join(cells)
            + f" | {_f(r['approx_max_k_ms'], '.1f')} / {_f(r['approx_max_k_over_lax'], '.1f')}x "
            f"| {r['approx_recall']:.3f} | {_f(r['materialised_score_topk_ms'], '.1f')} "
            f"| {_f(r['streamed_score_topk_ms'], '.1f')} ({r['streamed_chunk']})"
            + ("" if r["streamed_exact"] else " NOT exact")
            + f" | {_f(r['materialised_scores_mb'], '.0f')} / {_f(r['streamed_scores_mb'], '.0f')} |"
        )
    if any(r.get("approx_is_fallback") for r in tk["rows"]):
        lines += ["", "On this backend `approx_max_k` lowers to XLA's *fallback* (the HLO says "
                  "`is_fallback = true`): an exact top-k, hence recall 1.0. The approximate "
                  "algorithm proper runs on TPU."]
    lines += ["", "![topk](topk.png)", ""]
    return lines


def seeds_section(res: dict) -> list[str]:
    """Part 5: seeds, as markdown lines."""
    lines: list[str] = []
    sd = res["seeds"]
    lines += [
        "## 5. K seeds in one program against K separate runs (DiffRec)",
        "",
        f"{_load(sd['loadavg'])}. Data: {sd['data']}; {sd['epochs']} epochs per run, steady-state epoch = "
        "median after the first (compiling) epoch; evaluation = one full ranking of every replica. "
        "Ratio = vmapped time / (K x time of one seed): below 1 means the vmapped program is cheaper.",
        "",
        "| K | s / epoch | ratio vs K separate | s / evaluation | ratio vs K separate | first epoch (compile) s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in sd["rows"]:
        lines.append(f"| {r['k']} | {r['epoch_s']:.3f} | {_f(r.get('epoch_ratio_vs_separate'))} | "
                     f"{r['eval_s']:.2f} | {_f(r.get('eval_ratio_vs_separate'))} | {r['first_epoch_s']:.2f} |")
    lines.append("")
    return lines


def markdown(res: dict) -> str:
    """The human-readable report of whatever parts ``res`` holds."""
    env = res["environment"]
    lines = [
        "# diffrec_jax benchmark suite",
        "",
        f"- {env['date']}, mode **{'quick (tiny sizes)' if res['quick'] else 'full'}**; "
        f"command: `{res['command']}`",
        f"- devices: {', '.join(env['devices'])} ({env['backend']}); {env['cpu_count']} CPU cores; "
        f"jax {env['jax']}, Python {env['python']}",
        f"- **{env['gpu']}**",
        f"- load average (1/5/15 min) at start: {env['loadavg_start']}; other processes were "
        "running on this machine whenever the 1-minute value exceeds the cores in use. Loads at "
        "the start/end of every part are listed with it.",
        "",
    ]
    for part, section in (("models", models_section), ("steps", steps_section),
                          ("scaling", scaling_section), ("topk", topk_section),
                          ("seeds", seeds_section)):
        if part in res:
            lines += section(res)
    if res.get("errors"):
        lines += ["## Errors", ""] + [f"- {k}: {v}" for k, v in res["errors"].items()] + [""]
    lines.append(f"Load average at the end: {res.get('loadavg_end', '-')}.")
    return "\n".join(lines) + "\n"


def plots(res: dict, out: str) -> list[str]:
    """Writes ``steps.png``, ``scaling.png`` and ``topk.png`` for the parts present."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    if "steps" in res:
        s = res["steps"]
        ns = [r["n"] for r in s["rows"]]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for key, mk in (("recall@20", "o-"), ("ndcg@20", "s-")):
            a1.plot(ns, [r[key] for r in s["rows"]], mk, label=f"test {key}")
            a1.axhline(s["x0_t0"][key], ls="--", lw=0.8, color="gray")
        a1.set(xscale="log", xlabel="reverse steps n (t = n-1..0)", ylabel="metric",
               title="DiffRec accuracy vs reverse steps (dashed: x0 at t=0)")
        a1.legend()
        a2.plot(ns, [r["eval_ms_per_user"] for r in s["rows"]], "o-", label="projected")
        gn = [r for r in s["rows"] if "generic_ms_per_user" in r]
        if gn:
            a2.plot([r["n"] for r in gn], [r["generic_ms_per_user"] for r in gn], "s-", label="generic")
        a2.set(xscale="log", yscale="log", xlabel="reverse steps n", ylabel="evaluation ms / user",
               title="evaluation time vs reverse steps")
        a2.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "steps.png"), dpi=110)
        plt.close(fig)
        written.append("steps.png")
    if "scaling" in res:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, axis in zip(axes, ("items", "users")):
            a = res["scaling"][f"{axis}_axis"]
            xs = np.array([p[axis] for p in a["points"]], float)
            for cost, mk in (("train_us_per_user", "o"), ("eval_us_per_user", "s")):
                ys = np.array([p[cost] for p in a["points"]], float)
                if xs.size == 0:
                    continue
                fit = a["fits"][cost]["all"]
                (line,) = ax.plot(xs, ys, mk, label=f"{cost} (fitted a={_f(fit['exponent'], '.2f')})")
                if math.isfinite(fit["exponent"]):
                    ax.plot(xs, fit["prefactor"] * xs ** fit["exponent"], "--", lw=0.8,
                            color=line.get_color())
            ax.set(xscale="log", yscale="log", xlabel=axis, ylabel="microseconds per user",
                   title=f"cost vs {axis}" + (" (stopped early)" if a["stopped"] else ""))
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "scaling.png"), dpi=110)
        plt.close(fig)
        written.append("scaling.png")
    if "topk" in res:
        tk = res["topk"]
        fig, ax = plt.subplots(figsize=(6, 4))
        names = ["lax_top_k", "approx_max_k", "materialised_score_topk", "streamed_score_topk"]
        names += [f"chunked_{c}" for c in tk["chunks"]]
        for name in names:
            pts = [(r["items"], r[f"{name}_ms"]) for r in tk["rows"] if f"{name}_ms" in r]
            if pts:
                ax.plot(*zip(*pts), "o-", label=name)
        ax.set(xscale="log", yscale="log", xlabel="items", ylabel="ms per batch",
               title=f"top-{tk['k']} of {tk['batch']} rows")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "topk.png"), dpi=110)
        plt.close(fig)
        written.append("topk.png")
    return written


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.bool_,)):
        return bool(o)
    return str(o)


def write_outputs(res: dict, out: str) -> None:
    """Writes ``bench_suite.json``, ``bench_suite.md`` and the plots into ``out``."""
    os.makedirs(out, exist_ok=True)
    res["plots"] = plots(res, out)
    with open(os.path.join(out, "bench_suite.json"), "w") as f:
        json.dump(res, f, indent=2, default=_json_default)
    with open(os.path.join(out, "bench_suite.md"), "w") as f:
        f.write(markdown(res))
