"""report: evaluate's metrics presented: the side-by-side table, report.md and the plots.

    plots = write_plots(metrics, paths.evaluate)                              # the plots that have something to show
    write_text_atomic(report_markdown(config, metrics, plots), paths.evaluate / "report.md")

evaluate computes (cotdistill/stages/evaluate/ writes metrics.json); this module only presents what it computed.
Every ratio and difference is shown with its interval, and said in words when the interval spans "no difference";
a section appears only when it has something to say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cotdistill.config.run import RunConfig
from cotdistill.config.sections import AdaptiveEvalConfig

MAX_SERIES = 6  # models drawn in one plot; the others are named in a note
MIN_BIN_SAMPLES = 20  # a length bin with fewer completions is not drawn (its accuracy would be noise)
MIN_BINS = 3  # a model with fewer bins left has no length line
PLAIN_FORMATS = ("safetensors", "bin", None)  # weights as trained: nothing quantized


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def interval(ci: list[float] | tuple[float, float] | None) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def points(value: float, ci: list[float] | None) -> str:
    """A difference of accuracies in points, with its interval."""
    text = f"{100 * value:+.1f} points"
    return text + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")


def spans(ci: list[float] | None, null: float) -> bool:
    return bool(ci) and ci[0] <= null <= ci[1]


def format_table(metrics: dict[str, dict[str, Any]]) -> str:
    """The table the command prints: accuracy at a glance (report.md has the intervals)."""
    def cell(value: float | None) -> str:
        return "   -  " if value is None else f"{100 * value:5.1f}%"

    width = max([14, *(len(name) for name in metrics)])  # student_onpolicy and extra models' names are longer
    header = (f"{'model':<{width}} {'greedy':>7} {'maj@1':>7} {'maj@K':>7} {'pass@K':>7} {'K':>3} "
              f"{'tok/q':>7} {'tok/s':>7} {'params':>8}")
    adaptive = any("adaptive_accuracy" in m for m in metrics.values())
    if adaptive:  # adaptive self-consistency's accuracy and the share of the K samples it used
        header += f" {'adapt':>7} {'used':>5}"
    trained = any("training" in m for m in metrics.values())
    if trained:  # what training each student cost: its stage's wall time, student tokens sampled, teacher tokens
        header += f" {'train s':>8} {'sampled':>8} {'teacher':>8}"
    lines = [header, "-" * len(header)]
    for name, m in metrics.items():
        k = m["k"]
        params = f"{m['parameters'] / 1e6:.{0 if m['parameters'] >= 1e7 else 2}f}M" if m.get("parameters") else "-"
        tps = f"{m['tokens_per_s']:.0f}" if m.get("tokens_per_s") else "-"
        lines.append(f"{name:<{width}} {cell(m['greedy_accuracy']):>7} {cell(m['maj@1']):>7} {cell(m[f'maj@{k}']):>7} "
                     f"{cell(m[f'pass@{k}']):>7} {k:>3} {m['sampled_tokens_per_question']:>7.0f} {tps:>7} "
                     f"{params:>8}")
        if adaptive:
            ratio = m.get("adaptive_sample_ratio")
            lines[-1] += f" {cell(m.get('adaptive_accuracy')):>7} {'-' if ratio is None else f'{ratio:.2f}':>5}"
        if trained:
            cost = m.get("training") or {}
            lines[-1] += "".join(f" {count(cost.get(key)):>8}"
                                 for key in ("wall_s", "student_tokens_sampled", "teacher_tokens_scored"))
    return "\n".join(lines)


def count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def training_report(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """Each trained student's cost beside its accuracy: the stage that made it, steps, wall time, tokens."""
    rows = [(name, m) for name, m in metrics.items() if "training" in m]
    if not rows:
        return []
    lines = ["## Training cost", "",
             "| model | stage | steps | wall s | student tokens sampled | teacher tokens scored | greedy | maj@K |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, m in rows:
        cost, k = m["training"], m["k"]
        lines.append(f"| {name} | {cost['stage']} | {count(cost.get('steps'))} | {count(cost.get('wall_s'))} | "
                     f"{count(cost.get('student_tokens_sampled'))} | {count(cost.get('teacher_tokens_scored'))} | "
                     f"{pct(m['greedy_accuracy'])} | {pct(m[f'maj@{k}'])} |")
    return lines + ["", "The cost of the stage that made each model alone (a student trained on-policy after "
                    "train also cost train's); train (SFT, KD) samples nothing: its tokens are the teacher's "
                    "rationales, read from disk.", ""]


def speed_cell(m: dict[str, Any]) -> str:
    if not m.get("tokens_per_s"):
        return "-"
    low, high = m.get("tokens_per_s_range") or (m["tokens_per_s"], m["tokens_per_s"])
    return f"{m['tokens_per_s']:.0f} [{low:.0f}, {high:.0f}]"


def report_markdown(config: RunConfig, metrics: dict[str, dict[str, Any]], plots: list[str] | None = None) -> str:
    ev = config.evaluate
    speed = ev.speed
    lines = [
        f"# Evaluation: {config.run_name}", "",
        f"Test questions: `{ev.data.path if ev.data else '-'}`; sampled at temperature {ev.temperature}; answer "
        f"format `{ev.answer_format or config.filter.answer_format}`. Brackets are 95% bootstrap intervals over "
        "the questions.", "",
        "| model | parameters | weights on disk | greedy | maj@1 | maj@K | pass@K | K | tokens/question | tokens/s "
        "| s/question |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in metrics.items():
        k = m["k"]
        params = f"{m['parameters'] / 1e6:.1f}M" if m.get("parameters") else "-"
        size = f"{m['weights_mb']:.0f} MB" if m.get("weights_mb") else "-"
        lines.append(
            f"| {name} | {params} | {size} | {pct(m['greedy_accuracy'])}{interval(m['greedy_accuracy_ci'])} | "
            f"{pct(m['maj@1'])}{interval(m['maj_at_1_ci'])} | {pct(m[f'maj@{k}'])}{interval(m['maj_at_K_ci'])} | "
            f"{pct(m[f'pass@{k}'])}{interval(m['pass_at_K_ci'])} | {k} | {m['sampled_tokens_per_question']:.0f} | "
            f"{speed_cell(m)} | {m['seconds_per_question'] or '-'} |")
    lines += [
        "", "Columns: greedy is one completion at temperature 0; maj@k the expected accuracy of a majority vote "
        "over a random k-subset of the K samples (exact, or "
        f"{ev.maj_draws} seeded draws; unparseable answers do not vote; a tie among t answers scores 1/t when the "
        "gold is among them); pass@k Chen et al.'s (2021) unbiased estimate that one of k samples is right; "
        "tokens/question the generated tokens of the K samples; s/question the wall time of the greedy and "
        "sampled passes per question.",
        ("tokens/s is measured alike for every model (evaluate.speed): after a warm-up batch, "
         f"{speed.repeats} batches of {speed.prompts} prompts, each generating exactly {speed.max_tokens} tokens, "
         "greedily; the median, and in brackets the range over the batches." if speed is not None else
         "tokens/s was not measured (evaluate.speed is off)."), ""]
    lines += comparisons(metrics)
    lines += training_report(metrics)
    lines += distill_or_quantize(config, metrics)
    if ev.adaptive is not None:
        lines += adaptive_report(ev.adaptive, metrics)
    if any("code" in m for m in metrics.values()):
        lines += code_report(metrics)
    if thinks(config, metrics):
        lines += thinking_report(metrics, ev.max_reasoning_tokens)
    captions = {"accuracy_vs_k.png": "accuracy against k", "accuracy_vs_tokens.png": "accuracy against generated "
                "tokens", "accuracy_vs_length.png": "accuracy against completion length"}
    for name in plots or []:
        lines += ["", f"![{captions.get(name, name)}]({name})"]
    return "\n".join(lines) + "\n"


def comparisons(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """Each model against the teacher and against the base student, in words, every figure with its interval."""
    lines = []
    for name, m in metrics.items():
        said = []
        t = m.get("vs_teacher")
        if t:
            k = t["k"]
            if t.get("maj_share") is not None:
                share = (f"keeps {100 * t['maj_share']:.0f}%{interval(t['maj_share_ci'])} of the teacher's maj@{k}")
                if t["maj_share_ci"] is None:  # the teacher scores 0 in some resamples: the ratio has no interval
                    share += (" (too few of the teacher's answers are right for an interval of the share; the "
                              f"difference: {points(t['maj_difference'], t['maj_difference_ci'])})")
                elif spans(t["maj_share_ci"], 1.0):
                    share += " (the interval spans 100%: not distinguishable from the teacher at this sample size)"
                said.append(share)
            else:
                said.append(f"has maj@{k} {points(t['maj_difference'], t['maj_difference_ci'])} against the "
                            "teacher's 0% (no share of it is defined)")
            said.append(f"agrees with the teacher's vote on {pct(t['agreement'])}{interval(t['agreement_ci'])} of "
                        "the questions")
            if t.get("speed") is not None:
                ratio = f"runs at {t['speed']:.2f}x the teacher's tokens/s [{t['speed_range'][0]:.2f}, " \
                        f"{t['speed_range'][1]:.2f}]"
                if spans(t["speed_range"], 1.0):
                    ratio += " (the range spans 1x: the same speed within noise)"
                said.append(ratio)
            sizes = [f"{t[key]:.2f}x its {what}" for key, what in (("parameters_share", "parameters"),
                                                                     ("bytes_share", "bytes on disk")) if key in t]
            if sizes:
                said.append("has " + " and ".join(sizes) + " (exact)")
        b = m.get("vs_base")
        if b:
            gain = f"{points(b['maj_difference'], b['maj_difference_ci'])} in maj@{b['k']}"
            if "greedy_difference" in b:
                gain += f" and {points(b['greedy_difference'], b['greedy_difference_ci'])} in greedy accuracy"
            gain += " over base_student"
            if spans(b["maj_difference_ci"], 0.0) and spans(b.get("greedy_difference_ci"), 0.0):
                gain += " (both intervals span 0: no difference shown at this sample size)"
            said.append(gain)
        if said:
            lines.append(f"- **{name}** " + "; ".join(said) + ".")
    if lines:
        lines = ["## Compared", "", "Paired over the same questions (bootstrap, 95%); the speed ratio's bracket is "
                 "its range over the measured batches.", ""] + lines + [""]
    return lines


def distill_or_quantize(config: RunConfig, metrics: dict[str, dict[str, Any]]) -> list[str]:
    """Every model beside the teacher by what it costs and what it keeps: the question a team asks before distilling
    (would the teacher in 8 or 4 bits do?). Shown when the run scores extra models or a quantized one."""
    teacher = metrics.get("teacher")
    quantized = any(m.get("weights_format") not in PLAIN_FORMATS for m in metrics.values())
    if teacher is None or len(metrics) < 2 or not (config.evaluate.extra_models or quantized):
        return []

    def share(t: dict[str, Any] | None, key: str) -> str:
        return "-" if not t or t.get(key) is None else f"{t[key]:.2f}x"

    lines = ["## Distill or quantize", "",
             "Each model beside the teacher: its weights' format, parameters (as the unquantized model has them) and "
             "bytes on disk (as stored: a quantized model by its packed bytes), each also as a share of the "
             "teacher's; its speed; and maj@K as a share of the teacher's, with its interval. Unknown sizes (a "
             "served model, a packing not read here) are shown as -.", "",
             "| model | weights format | parameters | of the teacher's | bytes on disk | of the teacher's | tokens/s "
             "| maj@K | of the teacher's |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, m in metrics.items():
        t = m.get("vs_teacher")
        params = f"{m['parameters'] / 1e6:.1f}M" if m.get("parameters") else "-"
        size = f"{m['weights_mb']:.0f} MB" if m.get("weights_mb") else "-"
        kept = "1.00x" if name == "teacher" else (
            "-" if not t or t.get("maj_share") is None else f"{t['maj_share']:.2f}x{interval(t['maj_share_ci'])}"
            + ("" if t["maj_share_ci"] else " (no interval: too few right)"))
        lines.append(f"| {name} | {m.get('weights_format') or '-'} | {params} | "
                     f"{'1.00x' if name == 'teacher' else share(t, 'parameters_share')} | {size} | "
                     f"{'1.00x' if name == 'teacher' else share(t, 'bytes_share')} | {speed_cell(m)} | "
                     f"{pct(m['maj_at_k'][-1] if m['maj_at_k'] else None)} | {kept} |")
    return lines + [""]


def code_report(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """report.md's section for answer_format code: why programs failed, per model, over the sampled programs."""
    reasons = ("no_code", "syntax_error", "unfinished_reasoning", "tests_failed", "runtime_error", "exec_timeout",
               "memory_limit", "output_limit")
    lines = [
        "## Code: verdicts by execution", "",
        "Every sampled program ran against its question's tests in the sandbox. Each program has one verdict, so "
        "each row adds up to 100%: passed, or why not (no_code: no complete program; syntax_error: it does not "
        "compile; unfinished_reasoning: its reasoning never closed; the others: what the sandbox saw when it ran). "
        "pass@k counts programs that pass every test; maj@k votes by execution class (AlphaCode's clustering: "
        "programs with the same results on the test inputs are one answer). classes/question is the mean number of "
        "execution classes among a question's programs; pass/fail votes counts the questions whose programs' "
        "calls could not be recorded (no entry point), so their vote was by passed or failed.", "",
        "| model | programs | passed | " + " | ".join(reasons) + " | classes/question | pass/fail votes |",
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
    return lines + [""]


def thinks(config: RunConfig, metrics: dict[str, dict[str, Any]]) -> bool:
    """A run with thinking: some completion's reasoning was kept apart or counted, or a budget was set."""
    return (config.evaluate.max_reasoning_tokens is not None
            or any((m.get("reasoning_tokens_mean") or 0) > 0 for m in metrics.values())
            or any("unfinished_reasoning" in (m.get("no_answer_reasons") or {}) for m in metrics.values()))


def thinking_report(metrics: dict[str, dict[str, Any]], budget: int | None) -> list[str]:
    """report.md's section on what thinking costs, per model, over its sampled completions."""
    lines = [
        "## What thinking costs", "",
        "Over the sampled completions: the share with no answer (no final answer found, or reasoning never "
        "closed), the share cut off by max_tokens and, of those, the share cut inside the reasoning (it never "
        "answered), and the mean tokens of reasoning and of answer (over completions whose reasoning was counted)."
        + (f" The reasoning budget is {budget} tokens." if budget else ""), "",
        "| model | no answer | truncated | of which in reasoning | reasoning tokens | answer tokens |"
        + (" budget hit |" if budget else ""),
        "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if budget else ""),
    ]
    for name, m in metrics.items():
        mean = lambda key: "-" if m.get(key) is None else f"{m[key]:.1f}"  # noqa: E731
        lines.append(f"| {name} | {pct(m.get('no_answer_rate'))} | {pct(m.get('truncation_rate'))} | "
                     f"{pct(m.get('truncated_in_reasoning'))} | {mean('reasoning_tokens_mean')} | "
                     f"{mean('answer_tokens_mean')} |" + (f" {pct(m.get('reasoning_budget_hit_rate'))} |"
                                                          if budget else ""))
    return lines + [""]


def adaptive_report(adaptive: AdaptiveEvalConfig, metrics: dict[str, dict[str, Any]]) -> list[str]:
    """report.md's section on adaptive self-consistency: its accuracy and samples beside maj@K."""
    rule = (f"Adaptive-Consistency's Beta rule at confidence {adaptive.confidence}" if adaptive.rule == "beta"
            else f"ESC's window rule (the last {adaptive.window} answers agree)")
    lines = [
        "## Adaptive self-consistency", "",
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
        gap = f"{100 * m['adaptive_gap_to_maj_at_K']:+.1f}{interval(m['adaptive_gap_ci'])}"
        if spans(m["adaptive_gap_ci"], 0.0):
            gap += " (spans 0: no difference shown)"
        lines.append(f"| {name} | {pct(maj)} | {pct(m['adaptive_accuracy'])}{interval(m['adaptive_accuracy_ci'])} "
                     f"| {gap} | {m['adaptive_samples_mean']:.2f} of {m['k']} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} |")
    return lines + [""]


def write_plots(metrics: dict[str, dict[str, Any]], out_dir: Path) -> list[str]:
    """The plots that have something to show, by file name: accuracy_vs_k.png (maj@k and pass@k),
    accuracy_vs_tokens.png, accuracy_vs_length.png (only bins of at least MIN_BIN_SAMPLES completions). Series
    are told apart by colour and marker, and offset a little where models coincide; at most MAX_SERIES models per
    plot; axes have plain ticks. A plot with nothing to show is not written (an older one is removed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    markers = "osD^vP*X"
    shown = dict(list(metrics.items())[:MAX_SERIES])
    left_out = list(metrics)[MAX_SERIES:]
    written = []

    def plain(ax: Any, axis: str = "x") -> None:
        target = ax.xaxis if axis == "x" else ax.yaxis
        if (ax.get_xscale() if axis == "x" else ax.get_yscale()) == "log":  # 1, 2, 5 per decade: labels on a
            target.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # short span
        target.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_formatter(matplotlib.ticker.NullFormatter())

    def save(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, name: str) -> None:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if left_out:
            fig.text(0.01, 0.01, f"not drawn: {', '.join(left_out)}", fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        written.append(name)

    def offset(i: int) -> float:  # models whose curves coincide stay visible side by side
        return (i - (len(shown) - 1) / 2) * 0.06

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, m) in enumerate(shown.items()):
        ks = [k + offset(i) for k in range(1, m["k"] + 1)]
        line, = ax.plot(ks, [100 * v for v in m["maj_at_k"]], marker=markers[i % len(markers)], label=f"{name} maj@k")
        ax.plot(ks, [100 * v for v in m["pass_at_k"]], linestyle="--", marker=markers[i % len(markers)],
                fillstyle="none", color=line.get_color(), alpha=0.6, label=f"{name} pass@k")
        if "adaptive_accuracy" in m:  # at the mean number of samples it used
            ax.plot([m["adaptive_samples_mean"]], [100 * m["adaptive_accuracy"]], marker="*", markersize=12,
                    linestyle="none", color=line.get_color(), label=f"{name} adaptive")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    save(fig, ax, "k (samples per question; models offset a little to stay visible)", "accuracy (%)",
         "Self-consistency: accuracy against k", "accuracy_vs_k.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    spread = []
    for i, (name, m) in enumerate(shown.items()):
        tokens = [k * m["tokens_per_sample"] for k in range(1, m["k"] + 1)]
        spread += tokens
        # each later series drawn smaller, so one that coincides with an earlier one (the same weights) leaves it
        # visible around it
        ax.plot(tokens, [100 * v for v in m["maj_at_k"]], marker=markers[i % len(markers)], label=name,
                markersize=max(3.0, 9.0 - 2.0 * i), linewidth=max(1.0, 3.0 - 0.7 * i))
    if spread and min(spread) > 0 and max(spread) > 10 * min(spread):
        ax.set_xscale("log")
        plain(ax)
    save(fig, ax, "generated tokens per question (k samples)", "maj@k accuracy (%)",
         "Accuracy against generated tokens", "accuracy_vs_tokens.png")

    # Accuracy against completion length, and beside it how long the right and the wrong completions run.
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    drawn = False
    for i, (name, m) in enumerate(shown.items()):
        by_length = m.get("accuracy_by_length")
        if not by_length:
            continue
        edges, low = by_length["edges"], by_length.get("low", 0)
        bins = [((edges[b - 1] if b else low) + edges[b]) / 2 for b in range(len(edges))]
        kept = [b for b in range(len(edges)) if by_length["samples"][b] >= MIN_BIN_SAMPLES]
        if len(kept) < MIN_BINS:
            continue
        drawn = True
        marker = markers[i % len(markers)]
        line, = left.plot([bins[b] for b in kept], [100 * by_length["accuracy"][b] for b in kept], marker=marker,
                          label=name)
        right.plot([bins[b] for b in kept], [by_length["correct"][b] for b in kept], marker=marker,
                   color=line.get_color(), label=f"{name} right")
        right.plot([bins[b] for b in kept], [by_length["wrong"][b] for b in kept], marker=marker, fillstyle="none",
                   linestyle="--", color=line.get_color(), label=f"{name} wrong")
        if by_length.get("geometric"):
            for ax in (left, right):
                ax.set_xscale("log")
                plain(ax)
    if not drawn:
        plt.close(fig)
        (out_dir / "accuracy_vs_length.png").unlink(missing_ok=True)
        return written
    right.set_xlabel("completion tokens (bin)")
    right.set_ylabel("completions")
    right.set_title("Right and wrong completions by length")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    save(fig, left, f"completion tokens (bins of at least {MIN_BIN_SAMPLES} completions)", "accuracy (%)",
         "Accuracy against completion length", "accuracy_vs_length.png")
    return written
