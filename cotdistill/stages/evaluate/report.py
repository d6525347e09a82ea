"""report: evaluate's metrics presented: the side-by-side table, report.md and the plots.

    write_text_atomic(report_markdown(config, metrics), paths.evaluate / "report.md")    # evaluate, at its end

evaluate computes (cotdistill/stages/evaluate/ writes metrics.json); this module only presents what it computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.config.sections import AdaptiveEvalConfig


def format_table(metrics: dict[str, dict[str, Any]]) -> str:
    def pct(value: float | None) -> str:
        return "   -  " if value is None else f"{100 * value:5.1f}%"

    header = (f"{'model':<14} {'greedy':>7} {'maj@1':>7} {'maj@K':>7} {'pass@K':>7} {'K':>3} "
              f"{'tok/q':>7} {'tok/s':>7} {'params':>8}")
    adaptive = any("adaptive_accuracy" in m for m in metrics.values())
    if adaptive:  # adaptive self-consistency's accuracy and the share of the K samples it used
        header += f" {'adapt':>7} {'used':>5}"
    lines = [header, "-" * len(header)]
    for name, m in metrics.items():
        k = m["k"]
        params = f"{m['parameters'] / 1e6:.{0 if m['parameters'] >= 1e7 else 2}f}M" if m.get("parameters") else "-"
        tps = f"{m['tokens_per_s']:.0f}" if m.get("tokens_per_s") else "-"
        lines.append(f"{name:<14} {pct(m['greedy_accuracy']):>7} {pct(m['maj@1']):>7} {pct(m[f'maj@{k}']):>7} "
                     f"{pct(m[f'pass@{k}']):>7} {k:>3} {m['sampled_tokens_per_question']:>7.0f} {tps:>7} {params:>8}")
        if adaptive:
            ratio = m.get("adaptive_sample_ratio")
            lines[-1] += f" {pct(m.get('adaptive_accuracy')):>7} {'-' if ratio is None else f'{ratio:.2f}':>5}"
    return "\n".join(lines)


def report_markdown(config: RunConfig, metrics: dict[str, dict[str, Any]]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    def interval(ci: list[float] | tuple[float, float] | None) -> str:
        return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    ev = config.evaluate
    lines = [
        f"# Evaluation: {config.run_name}", "",
        f"Test questions: `{ev.data.path if ev.data else '-'}`; sampled at temperature {ev.temperature}; answer "
        f"format `{ev.answer_format or config.filter.answer_format}`. Brackets are 95% bootstrap intervals over "
        "questions.", "",
        "maj@k is the expected accuracy of a majority vote over a random k-subset of the K samples (exact, or "
        f"{ev.maj_draws} seeded draws); unparseable answers do not vote; a tie among t answers scores 1/t when "
        "the gold is among them. pass@k is the unbiased estimator of Chen et al. (2021).", "",
        "| model | params | weights | greedy | maj@1 | maj@K | pass@K | K | tokens/question | tokens/s | s/question |"
        " agrees with teacher |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in metrics.items():
        k = m["k"]
        lines.append(
            f"| {name} | {m['parameters'] / 1e6:.1f}M |" if m.get("parameters") else f"| {name} | - |")
        lines[-1] += (
            f" {m['weights_mb']:.0f} MB |" if m.get("weights_mb") else " - |") + (
            f" {pct(m['greedy_accuracy'])}{interval(m['greedy_accuracy_ci'])} | {pct(m['maj@1'])}{interval(m['maj_at_1_ci'])} |"
            f" {pct(m[f'maj@{k}'])}{interval(m['maj_at_K_ci'])} | {pct(m[f'pass@{k}'])}{interval(m['pass_at_K_ci'])} |"
            f" {k} | {m['sampled_tokens_per_question']:.0f} | {m['tokens_per_s'] or '-'} |"
            f" {m['seconds_per_question'] or '-'} | {pct(m.get('agreement_with_teacher'))} |")
    lines.append("")
    for name, m in metrics.items():
        if name == "teacher" or "teacher" not in metrics or "share_of_teacher_maj" not in m:
            continue
        k = min(m["k"], metrics["teacher"]["k"])
        speed = f" at {m['speed_vs_teacher']}x its tokens/s" if m.get("speed_vs_teacher") else ""
        size = f" and {m['size_vs_teacher']}x smaller" if m.get("size_vs_teacher") else ""
        if m["share_of_teacher_maj"] is None:
            lines.append(f"- **{name}**: the teacher's maj@{k} is 0, so no share of the teacher's accuracy is "
                         f"defined; it runs{speed or ' at an unmeasured speed'}{size}.")
        else:
            lines.append(f"- **{name}** keeps {100 * m['share_of_teacher_maj']:.0f}% of the teacher's maj@{k} "
                         f"accuracy{speed}{size}.")
    lines += distill_or_quantize(metrics, pct)
    if ev.adaptive is not None:
        lines += adaptive_report(ev.adaptive, metrics, pct, interval)
    if any("code" in m for m in metrics.values()):
        lines += code_report(metrics, pct)
    lines += thinking_report(metrics, pct, ev.max_reasoning_tokens)
    lines += ["", "![accuracy against k](accuracy_vs_k.png)", "",
              "![accuracy against generated tokens](accuracy_vs_tokens.png)", "",
              "![accuracy against completion length](accuracy_vs_length.png)", ""]
    return "\n".join(lines)


def distill_or_quantize(metrics: dict[str, dict[str, Any]], pct: Any) -> list[str]:
    """Every model beside the teacher by what it costs and what it keeps: the question a team asks before
    distilling (would the teacher in 8 or 4 bits do?). Accuracy is relative to the teacher's at the same K."""
    teacher = metrics.get("teacher")
    if teacher is None or len(metrics) < 2:
        return []

    def relative(value: float | None, base: float | None) -> str:
        return "-" if value is None or not base else f"{value / base:.2f}x"

    lines = ["", "## Distill or quantize", "",
             "Each model beside the teacher: its size, its weights on disk (as stored: a quantized model by its "
             "packed bytes), its speed here, and its accuracy as a share of the teacher's (maj@K at the smaller of "
             "the two K; greedy). Unknown sizes (a served model, a packing not read here) are shown as -.", "",
             "| model | weights format | params | weights on disk | tokens/s | maj@K | maj@K vs teacher | greedy "
             "| greedy vs teacher |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, m in metrics.items():
        k = min(m["k"], teacher["k"]) or 1
        maj, teacher_maj = (x["maj_at_k"][k - 1] if len(x["maj_at_k"]) >= k else None for x in (m, teacher))
        params = f"{m['parameters'] / 1e6:.1f}M" if m.get("parameters") else "-"
        size = f"{m['weights_mb']:.0f} MB" if m.get("weights_mb") else "-"
        lines.append(f"| {name} | {m.get('weights_format') or '-'} | {params} | {size} | {m.get('tokens_per_s') or '-'} "
                     f"| {pct(maj)} | {relative(maj, teacher_maj)} | {pct(m.get('greedy_accuracy'))} "
                     f"| {relative(m.get('greedy_accuracy'), teacher.get('greedy_accuracy'))} |")
    return lines


def code_report(metrics: dict[str, dict[str, Any]], pct: Any) -> list[str]:
    """report.md's section for answer_format code: why programs failed, per model, over the sampled programs."""
    reasons = ("no_code", "syntax_error", "tests_failed", "runtime_error", "exec_timeout", "memory_limit",
               "output_limit", "unfinished_reasoning")
    lines = [
        "", "## Code: verdicts by execution", "",
        "Every sampled program ran against its question's tests in the sandbox. pass@k counts programs that pass "
        "them all; maj@k votes by execution class (AlphaCode's clustering: programs with the same outputs on the "
        "test inputs are one answer, and the largest class is the vote). Why the others failed, as a share of "
        "all sampled programs:", "",
        "| model | programs | passed | " + " | ".join(reasons) + " | classes/question | votes by pass/fail |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in reasons) + " | ---: | ---: |",
    ]
    for name, m in metrics.items():
        c = m.get("code")
        if not c:
            continue
        n = max(1, c["programs"])
        lines.append(f"| {name} | {c['programs']} | {pct(c['passed'] / n)} | "
                     + " | ".join(pct(c["failures"].get(r, 0) / n) for r in reasons)
                     + f" | {c['execution_classes_per_question']} | {c['questions_voting_pass_fail']} |")
    return lines


def thinking_report(metrics: dict[str, dict[str, Any]], pct: Any, budget: int | None) -> list[str]:
    """report.md's section on what thinking costs, per model, over its sampled completions."""
    lines = [
        "", "## What thinking costs", "",
        "Over the sampled completions: the share with no answer, the share cut off by max_tokens and, of those, "
        "the share cut inside the reasoning (it never answered), and the mean tokens of reasoning and of answer."
        + (f" The reasoning budget is {budget} tokens." if budget else ""), "",
        "| model | no answer | truncated | of which in reasoning | reasoning tokens | answer tokens |"
        + (" budget hit |" if budget else ""),
        "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if budget else ""),
    ]
    for name, m in metrics.items():
        lines.append(f"| {name} | {pct(m.get('no_answer_rate'))} | {pct(m.get('truncation_rate'))} | "
                     f"{pct(m.get('truncated_in_reasoning'))} | {m.get('reasoning_tokens_mean') or 0:.1f} | "
                     f"{m.get('answer_tokens_mean') or 0:.1f} |"
                     + (f" {pct(m.get('reasoning_budget_hit_rate'))} |" if budget else ""))
    return lines


def adaptive_report(adaptive: AdaptiveEvalConfig, metrics: dict[str, dict[str, Any]], pct: Any,
                    interval: Any) -> list[str]:
    """report.md's section on adaptive self-consistency: its accuracy and samples beside maj@K."""
    rule = (f"Adaptive-Consistency's Beta rule at confidence {adaptive.confidence}" if adaptive.rule == "beta"
            else f"ESC's window rule (the last {adaptive.window} answers agree)")
    lines = [
        "", "## Adaptive self-consistency", "",
        f"Per question, the K samples above are walked in the order drawn, {adaptive.round_size} at a time, until "
        f"{rule} says the vote is settled, or all K are used; the vote at that point is the answer. The samples "
        "are i.i.d., so this is what sampling round by round would give. The gap is adaptive minus maj@K, with "
        "a paired interval.", "",
        "| model | maj@K | adaptive | gap | samples/question | share of K |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in metrics.items():
        if "adaptive_accuracy" not in m:
            continue
        ratio, maj = m["adaptive_sample_ratio"], m[f"maj@{m['k']}"]
        lines.append(
            f"| {name} | {pct(maj)} | {pct(m['adaptive_accuracy'])}"
            f"{interval(m['adaptive_accuracy_ci'])} | {100 * m['adaptive_gap_to_maj_at_K']:+.1f}"
            f"{interval(m['adaptive_gap_ci'])} | {m['adaptive_samples_mean']:.2f} of {m['k']} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} |")
    return lines


def write_plots(metrics: dict[str, dict[str, Any]], out_dir: Path) -> None:
    """accuracy_vs_k.png (maj@k solid, pass@k dashed, one colour per model) and accuracy_vs_tokens.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    def save(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, name: str) -> None:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in metrics.items():
        ks = range(1, m["k"] + 1)
        line, = ax.plot(ks, [100 * v for v in m["maj_at_k"]], marker="o", label=f"{name} maj@k")
        ax.plot(ks, [100 * v for v in m["pass_at_k"]], linestyle="--", color=line.get_color(), alpha=0.6,
                label=f"{name} pass@k")
        if "adaptive_accuracy" in m:  # at the mean number of samples it used
            ax.plot([m["adaptive_samples_mean"]], [100 * m["adaptive_accuracy"]], marker="*", markersize=12,
                    linestyle="none", color=line.get_color(), label=f"{name} adaptive")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    save(fig, ax, "k (samples per question)", "accuracy (%)", "Self-consistency: accuracy against k",
         "accuracy_vs_k.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in metrics.items():
        tokens = [k * m["tokens_per_sample"] for k in range(1, m["k"] + 1)]
        ax.plot(tokens, [100 * v for v in m["maj_at_k"]], marker="o", label=name)
    ax.set_xscale("log")
    save(fig, ax, "generated tokens per question (k samples)", "maj@k accuracy (%)",
         "Accuracy against generated tokens", "accuracy_vs_tokens.png")

    # Accuracy against completion length, and beside it how long the right and the wrong completions run.
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, m in metrics.items():
        by_length = m.get("accuracy_by_length")
        if not by_length:
            continue
        edges, low = by_length["edges"], by_length.get("low", 0)
        middles = [((edges[b - 1] if b else low) + edges[b]) / 2 for b in range(len(edges))]
        points = [(x, 100 * a) for x, a in zip(middles, by_length["accuracy"]) if a is not None]
        line, = left.plot([x for x, _ in points], [a for _, a in points], marker="o", label=name)
        right.plot(middles, by_length["correct"], marker="o", color=line.get_color(), label=f"{name} right")
        right.plot(middles, by_length["wrong"], marker="x", linestyle="--", color=line.get_color(),
                   label=f"{name} wrong")
    if any((m.get("accuracy_by_length") or {}).get("geometric") for m in metrics.values()):
        for ax in (left, right):
            ax.set_xscale("log")
    right.set_xlabel("completion tokens (bin)")
    right.set_ylabel("completions")
    right.set_title("Right and wrong completions by length")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    save(fig, left, "completion tokens (bin)", "accuracy (%)", "Accuracy against completion length",
         "accuracy_vs_length.png")
