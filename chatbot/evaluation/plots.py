"""PNG plots of training runs and evaluations.

matplotlib is an optional extra (``pip install -e ".[plot]"``), imported only when a plot is
drawn. Figures are built on the Agg canvas without pyplot: no global backend is switched under
an application that embeds the chatbot, and no GUI is needed. Files are written atomically,
so a crash never leaves half a PNG where a good one was.
"""

from __future__ import annotations

from pathlib import Path

from chatbot.errors import PlotError
from chatbot.evaluation.metrics import words as reply_words
from chatbot.files import atomic_path

RIGHT, WRONG = "tab:green", "tab:red"


def ensure_matplotlib() -> None:
    """Raise ``PlotError`` now if plots cannot be drawn (before a long evaluation, say)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError("plots need matplotlib: pip install matplotlib "
                        "(or the project's extra: pip install -e '.[plot]')") from None


def _figure(width: float, height: float):
    ensure_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as partial:
            figure.savefig(partial, format="png", dpi=100)
    except OSError as exc:
        raise PlotError(f"{out}: cannot write the plot ({exc.strerror or exc})") from None
    return out


def plot_training_history(history: dict, out_png: str | Path, title: str | None = None) -> Path:
    """Loss and token accuracy per epoch, train vs validation, from a Keras ``History.history``
    dict (``loss``, ``val_loss``, ``masked_accuracy``, ``val_masked_accuracy``; missing ones
    are left out). Loss is drawn on a log scale: late epochs would otherwise look flat."""
    panels = [(label, key) for label, key in (("loss", "loss"), ("token accuracy", "masked_accuracy"))
              if history.get(key) or history.get(f"val_{key}")]
    if not panels:
        raise PlotError("nothing to plot: the training history has no loss or accuracy")
    figure = _figure(5 * len(panels), 3.8)
    for axes, (label, key) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for name, legend in ((key, "train"), (f"val_{key}", "validation")):
            values = [float(v) for v in history.get(name) or ()]
            if values:
                axes.plot(range(1, len(values) + 1), values, label=legend,
                          marker="." if len(values) <= 40 else None)
        if key == "loss" and all(float(v) > 0 for name in (key, f"val_{key}") for v in history.get(name) or ()):
            axes.set_yscale("log")
        axes.set(xlabel="epoch", ylabel=label, title=label)
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    return _save(figure, out_png)


def plot_evaluation(report, out_png: str | Path) -> Path:
    """Reply length (words) and score distributions of an ``EvaluationReport``, right and
    wrong replies stacked in different colours: shows whether a low score flags a wrong reply
    (a useful fallback threshold) and whether wrong replies are too short or too long."""
    import numpy as np

    items = report.items
    if not items:
        raise PlotError("nothing to plot: the evaluation has no replies")
    figure = _figure(10, 3.8)
    from matplotlib.ticker import MaxNLocator

    length_axes, score_axes = figure.subplots(1, 2)
    words = [[len(reply_words(i.reply)) for i in items if i.exact],
             [len(reply_words(i.reply)) for i in items if not i.exact]]
    scores = [[i.score for i in items if i.exact], [i.score for i in items if not i.exact]]
    longest = max(max(w, default=0) for w in words)
    length_bins = np.arange(0, longest + 2) - 0.5 if longest <= 40 else np.linspace(-0.5, longest + 0.5, 41)
    low, high = min(min(s, default=0.0) for s in scores), max(max(s, default=0.0) for s in scores)
    score_bins = np.linspace(low, high, 31) if high > low else np.linspace(low - 0.5, high + 0.5, 31)
    labels = [f"right ({len(words[0])})", f"wrong ({len(words[1])})"]
    length_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axes, data, bins, xlabel in ((length_axes, words, length_bins, "reply length (words)"),
                                     (score_axes, scores, score_bins, "score (mean log-prob per token)")):
        axes.hist(data, bins=bins, stacked=True, color=[RIGHT, WRONG], label=labels)
        axes.set(xlabel=xlabel, ylabel="replies")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    length_axes.set_title("reply length")
    score_axes.set_title("score")
    figure.suptitle(f"{report.model} on {report.source}: exact match {report.exact_match:.1%}, "
                    f"chrF {report.chrf:.1f}, {len(items)} questions")
    return _save(figure, out_png)
