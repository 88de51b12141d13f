"""`python -m harness.report PATH [--out DIR] [--k K | --alpha A]`: one self-contained HTML report for a run,
a sweep, or any folder of runs.

Writes `report.html` (figures embedded as base64 PNGs, no external resources: it opens offline)
and the same figures as PNG files beside it, by default into `PATH/report/`. The report holds a
triage block (runs per class, the worst runs with one-line reasons, which swept keys explain the
disagreements; the rules are `harness.outputs.compare`'s), the configuration (long values
summarised), the sweep summary (done / skipped / failed jobs and their errors), the agreement table
(by class, then severity; sortable and filterable by a short inline script), per-layer variance
figures faceted by the swept keys (mean, median, range, theory), heatmaps over two swept keys of
where each pass ends and of log10(measured/theory), and the command that reproduces each run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from harness.cli import ArgumentParser, sweep
from harness.outputs import compare
from harness.outputs.results import (
    METADATA,
    METRICS,
    UnreadableResultsWarning,
    atomic_write_bytes,
    git_commit,
    load,
    versions,
)
from harness.report import figures as report_plots

MAX_PAGES = 12  #: at most this many figures per kind (one per combination of the extra keys)
DPI = 100


@dataclass
class Figure:
    name: str  #: file name of the PNG
    caption: str
    png: bytes


@dataclass
class Report:
    """Everything the HTML shows; `build` fills it, `render` turns it into HTML."""

    root: Path
    k: float | None
    alpha: float
    n_runs: int
    swept: list[str]
    fixed: dict[str, object]
    levels: dict[str, list[object]]
    agreement: pd.DataFrame
    commands: pd.DataFrame
    jobs: list[dict]
    sweeps: list[dict]
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: metrics.parquet files that could not be read (relative to the report's folder)
    unreadable: list[str] = field(default_factory=list)


# ---- layout -------------------------------------------------------------------------------------
def variance_layout(keys: Sequence[str]) -> tuple[str | None, str | None, str | None, list[str]]:
    """(hue, rows, cols, page keys): one line per depth (else width, else the last swept key),
    facets by the next two swept keys, one figure per combination of the rest."""
    keys = list(keys)
    hue = next((k for k in compare.NUMERIC_FIRST if k in keys), keys[-1] if keys else None)
    rest = [k for k in keys if k != hue]
    return hue, _at(rest, 0), _at(rest, 1), rest[2:]


def heatmap_layout(keys: Sequence[str]) -> tuple[str, str, str | None, str | None, list[str]] | None:
    """(x, y, rows, cols, page keys) for heatmaps, or None with fewer than two swept keys.
    x, y = depth × width when both were swept, else the first two swept keys."""
    keys = list(keys)
    if len(keys) < 2:
        return None
    if all(k in keys for k in compare.NUMERIC_FIRST):
        x, y = compare.NUMERIC_FIRST
    else:
        x, y = keys[0], keys[1]
    rest = [k for k in keys if k not in (x, y)]
    return x, y, _at(rest, 0), _at(rest, 1), rest[2:]


def _at(keys: Sequence[str], i: int) -> str | None:
    return keys[i] if len(keys) > i else None


def pages(table: pd.DataFrame, keys: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """(title, runs) per combination of `keys` present in `table`; one page when there are none."""
    if not keys:
        return [("", table)]
    out = []
    for values, part in table.groupby(list(keys), sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        out.append((report_plots._label(list(keys), list(values)), part))
    return out


# ---- building -----------------------------------------------------------------------------------
def build(path: str | Path, k: float | None = None, alpha: float = compare.ALPHA) -> Report:
    """Load the results under `path` and compute every table and figure of the report."""
    root = Path(path)
    with warnings.catch_warnings():  # listed in the sweep summary instead
        warnings.simplefilter("ignore", UnreadableResultsWarning)
        df = load(root)
    base = root if root.is_dir() else root.parent
    unreadable = [_rel(f, base) for f in df.attrs.get("unreadable", [])]
    stats = compare.layer_stats(df)
    table = compare.runs(df)
    keys = compare.swept_keys(df)
    rep = Report(
        root=root,
        k=k,
        alpha=alpha,
        n_runs=len(table),
        swept=keys,
        fixed=compare.fixed_config(df),
        levels={key: sorted(table[key].dropna().unique().tolist()) for key in keys},
        agreement=_relative(compare.agreement(df, k, stats, alpha), base),
        commands=_relative(reproduce_commands(table["run_dir"]), base),
        jobs=sweep.collect(base),
        sweeps=_sweep_records(base),
        unreadable=unreadable,
    )
    for q in ("forward", "backward"):
        hue, rows, cols, page_keys = variance_layout(keys)
        for n, (title, part) in enumerate(pages(table, page_keys)[:MAX_PAGES], 1):
            sub = df[df["run_dir"].isin(part["run_dir"])]
            fig = report_plots.variance_grid(sub, q, hue=hue, rows=rows, cols=cols,
                                             stats=stats[stats["run_dir"].isin(part["run_dir"])],
                                             title=title)
            rep.figures.append(Figure(f"fig-variance-{q}-{n}.png",
                                      f"{q} per layer" + (f" ({title})" if title else ""),
                                      _png(fig)))
    layout = heatmap_layout(keys)
    if layout is None:
        rep.notes.append("heatmaps need two swept keys; this result has "
                         f"{len(keys)} ({', '.join(keys) or 'none'})")
    else:
        rep.figures += heatmaps(table, stats, layout)
    for kind, page_keys in (("variance", variance_layout(keys)[3]),
                            ("heatmap", layout[4] if layout else [])):
        n_pages = len(pages(table, page_keys))
        if n_pages > MAX_PAGES:
            rep.notes.append(f"{kind} figures: the first {MAX_PAGES} of {n_pages} pages "
                             f"(combinations of {', '.join(page_keys)}) are shown")
    return rep


HEATMAPS = (
    ("forward_mean", True, "forward at the last layer L: replicate mean of $(h^L)^2$",
     "measured forward $q^L$ (colour: log10)"),
    ("backward_mean", True, r"backward at layer 1: replicate mean of $(\partial\,loss/\partial h^1)^2$",
     "measured backward at layer 1 (colour: log10)"),
    ("forward_log10_ratio", False, "forward at layer L: log10(measured / theory)", "log10(measured/theory)"),
    ("backward_log10_ratio", False, "backward at layer 1: log10(measured / theory)",
     "log10(measured/theory)"),
)


def heatmaps(table: pd.DataFrame, stats: pd.DataFrame, layout: tuple) -> list[Figure]:
    """The vanishing/exploding maps and the log-ratio maps, one figure per metric and page."""
    x, y, rows, cols, page_keys = layout
    ends = table.merge(compare.end_of_pass(stats), on="run_dir")
    figs = []
    for column, log10, title, bar in HEATMAPS:
        if column not in ends:
            continue
        for n, (page, part) in enumerate(pages(ends, page_keys)[:MAX_PAGES], 1):
            fig = report_plots.heatmap_grid(part, column, x=x, y=y, rows=rows, cols=cols,
                                            log10=log10, colorbar=bar,
                                            title=title + (f"\n{page}" if page else ""))
            figs.append(Figure(f"fig-heatmap-{column.replace('_', '-')}-{n}.png",
                               title.replace("$", "") + (f" ({page})" if page else ""), _png(fig)))
    return figs


def _png(fig) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # log axes spanning an overflow warn; the figure is fine
        warnings.simplefilter("ignore", RuntimeWarning)
        fig.savefig(buf, format="png", dpi=DPI)
    report_plots.plt.close(fig)
    return buf.getvalue()


def reproduce_commands(run_dirs: Sequence[str]) -> pd.DataFrame:
    """The command that reproduces each run (metadata.json's `reproduce`, else the parquet's)."""
    rows = []
    for run_dir in run_dirs:
        meta: dict = {}
        try:
            meta = json.loads((Path(run_dir) / METADATA).read_text())
        except (OSError, ValueError):
            try:
                meta = json.loads(pq.read_schema(Path(run_dir) / METRICS).metadata[b"harness"])
            except (OSError, KeyError, ValueError, TypeError):
                meta = {}
        rows.append({"run_dir": run_dir, "command": meta.get("reproduce") or "(not recorded)"})
    return pd.DataFrame(rows, columns=["run_dir", "command"])


def _relative(frame: pd.DataFrame, base: Path) -> pd.DataFrame:
    out = frame.copy()
    b = base.resolve()

    def rel(p: str) -> str:
        try:
            r = Path(p).resolve().relative_to(b)
            return str(r) if str(r) != "." else b.name
        except ValueError:
            return p

    out["run"] = out.pop("run_dir").map(rel)
    return out


def _rel(path: str, base: Path) -> str:
    """`path` relative to `base` where it lies under it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return path


def _sweep_records(base: Path) -> list[dict]:
    records = []
    for f in sorted(base.rglob(sweep.SWEEP)):
        if any(part.startswith(".") for part in f.relative_to(base).parts):
            continue
        try:
            records.append({"dir": str(f.parent), **json.loads(f.read_text())})
        except (OSError, ValueError):
            continue
    return records


# ---- HTML ---------------------------------------------------------------------------------------
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto;
       max-width: 1500px; padding: 0 20px; color: #1d2430; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px;
     border-bottom: 1px solid #d8dde6; padding-bottom: 4px; }
.meta { color: #5b6573; } code, .cmd { font: 12px ui-monospace, Menlo, Consolas, monospace; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #d8dde6; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f4f8; } tr.bad td { background: #fdecec; } tr.na td { background: #fff7e0; }
.counts span { display: inline-block; margin-right: 14px; padding: 2px 10px; border-radius: 10px;
               background: #eef1f6; } .counts .failed { background: #fdecec; }
.counts .done { background: #e8f6ec; } .counts .skipped { background: #eef1f6; }
figure { margin: 14px 0 28px; } figure img { max-width: 100%; border: 1px solid #e3e6ec; }
figcaption { color: #5b6573; font-size: 13px; }
nav a { margin-right: 14px; }
.wide { overflow-x: auto; max-width: 100%; } .fixed { overflow-wrap: anywhere; }
th.sort { cursor: pointer; } th.sort::after { content: " ↕"; color: #9aa3b0; }
input.filter { margin: 6px 0 2px; padding: 3px 6px; width: 320px; font: inherit; }
.classes span { display: inline-block; margin: 0 10px 4px 0; padding: 2px 10px; border-radius: 10px; }
span.c-disagrees { background: #f8d4d4; } span.c-numerical { background: #f3dcf5; }
span.c-bias { background: #fff0c2; } span.c-untested { background: #eef1f6; }
span.c-agrees { background: #dcf1e2; }
tr.c-disagrees td { background: #fdecec; } tr.c-numerical td { background: #fbeefc; }
tr.c-bias td { background: #fffaeb; }
ul.rules { margin: 4px 0; color: #3b4452; } .triage { border: 1px solid #d8dde6; border-radius: 6px;
       padding: 4px 16px 10px; background: #fbfcfe; }
"""

#: sorts a table by a clicked header (a cell's data-sort, else its number, else its text) and
#: filters its rows by the words typed above it; no network, no libraries
SCRIPT = """
for (const t of document.querySelectorAll("table.sortable")) {
  const f = Object.assign(document.createElement("input"), {className: "filter",
    placeholder: "filter rows: words that must all appear, e.g. gelu kaiming"});
  t.parentNode.insertBefore(f, t);
  f.addEventListener("input", () => { const w = f.value.toLowerCase().split(/\\s+/).filter(Boolean);
    for (const r of t.tBodies[0].rows) r.hidden = !w.every(x => r.textContent.toLowerCase().includes(x)); });
  t.tHead.querySelectorAll("th").forEach((th, i) => { th.className = "sort"; th.onclick = () => {
    const up = th.dataset.dir !== "asc"; th.dataset.dir = up ? "asc" : "desc";
    const key = r => { const c = r.cells[i], v = c.dataset.sort ?? c.textContent, n = Number(v);
      return v.trim() !== "" && !isNaN(n) ? [0, n] : [1, v]; };
    const rows = [...t.tBodies[0].rows].sort((a, b) => { const x = key(a), y = key(b);
      const o = x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0); return up ? o : -o; });
    t.tBodies[0].append(...rows); }; });
}
"""


def _esc(v: object) -> str:
    return html.escape(report_plots._fmt(v) if not isinstance(v, str) else v)


def _table(frame: pd.DataFrame, row_class=None, code: Sequence[str] = (), *, sortable: bool = False,
           sort_keys: dict[str, Callable[[object], object]] | None = None,
           formats: dict[str, Callable[[object], str]] | None = None) -> str:
    """An HTML table; `sortable` tables get the inline script's header sorting and row filter;
    `sort_keys` give a cell's data-sort value, `formats` its text."""
    sort_keys, formats = sort_keys or {}, formats or {}
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    body = []
    for _, r in frame.iterrows():
        cls = row_class(r) if row_class else ""
        cells = []
        for c in frame.columns:
            text = _esc(formats[c](r[c])) if c in formats else _esc(r[c])
            if c == "run":  # long folder names (key=value,key=value,...) may break after a comma
                text = text.replace(",", ",<wbr>")
            attr = f" data-sort='{_esc(str(sort_keys[c](r[c])))}'" if c in sort_keys else ""
            cells.append(f"<td{attr}><code>{text}</code></td>" if c in code else f"<td{attr}>{text}</td>")
        body.append(f"<tr class='{cls}'>{''.join(cells)}</tr>" if cls else f"<tr>{''.join(cells)}</tr>")
    table_class = " class='sortable'" if sortable else ""
    return (f"<div class='wide'><table{table_class}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


#: CSS class per run class
CLASS_CSS = {compare.DISAGREES: "c-disagrees", compare.NUMERICAL: "c-numerical", compare.BIAS: "c-bias",
             compare.UNTESTED: "c-untested", compare.AGREES: "c-agrees",
             compare.NO_THEORY: "c-untested"}
#: at most this many runs in the triage block's list of the worst
WORST = 10


def short_value(v: object, limit: int = 60) -> str:
    """A config value as the report shows it: a long comma-separated list run-length encoded
    ("256,256,...,256" → "256 × 51"; "784,256,256,10" stays), anything else cut to `limit`
    characters with "…"."""
    text = report_plots._fmt(v) if not isinstance(v, str) else v
    items = text.split(",")
    if len(items) > 4:
        runs: list[tuple[str, int]] = []
        for x in items:
            if runs and runs[-1][0] == x:
                runs[-1] = (x, runs[-1][1] + 1)
            else:
                runs.append((x, 1))
        if len(runs) < len(items):
            text = ", ".join(x if n == 1 else f"{x} × {n}" for x, n in runs)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _class_row(r: pd.Series) -> str:
    return CLASS_CSS.get(str(r["class"]), "")


def _severity(v: object) -> str:
    x = float(v) if isinstance(v, int | float) else float("inf")
    return f"{x:.3g}"


def _agreement_html(frame: pd.DataFrame) -> str:
    """The agreement table without its `reason` column (the triage block shows it)."""
    return _table(frame.drop(columns=["reason"], errors="ignore"), row_class=_class_row, sortable=True,
                  sort_keys={"class": compare.CLASSES.index, "severity": lambda v: v},
                  formats={"severity": _severity})


def triage_html(rep: Report) -> list[str]:
    """The block at the top: runs per class with each class's rule, the worst runs (at most
    WORST, not counting those that agree) with one-line reasons, and which swept keys explain
    the disagreements (`compare.explain`)."""
    table = rep.agreement
    out = ["<section class='triage' id='triage'><h2>Triage</h2>"]
    if table.empty:
        return [*out, "<p>No run to assess.</p></section>"]
    counts = compare.class_counts(table)
    out.append("<p class='classes'>" + "".join(
        f"<span class='{CLASS_CSS[c]}'><b>{n}</b> {_esc(c)}</span>" for c, n in counts.items()) + "</p>")
    out.append("<ul class='rules'>" + "".join(
        f"<li><b>{_esc(c)}</b>: {_esc(compare.CLASS_RULES[c])}</li>" for c in compare.CLASSES)
        + f"<li><b>tail</b>: the replicate mean is carried by a few replicates when half of the sum "
          f"of n ≥ {compare.TAIL_MIN_REPLICATES} values comes from at most max(1, ⌊n/8⌋) of them; "
          f"there the standard error is no guide (such a point counts as a significant departure "
          f"when its severity is beyond the limits) and the median is shown beside the mean</li>"
        + "<li><b>severity</b>: the worst significant departure in units of its limit "
          f"(|log10 r| / {compare.TOLERANCE:g} or |diff| / {compare.TOLERANCE:g}), comparable across "
          "quantities; runs are sorted by class, then by severity</li></ul>")
    for cls in (compare.DISAGREES, compare.NUMERICAL):
        out += [f"<p><b>{_esc(line)}</b></p>" for line in compare.explain(table, rep.swept, cls)]
    settled = table["class"].isin([compare.AGREES, compare.NO_THEORY])
    worst = table[~settled].head(WORST)
    if worst.empty and (table["class"] == compare.NO_THEORY).all():
        out.append("<p>No run has a theory to compare with: these are measured only "
                   "(harness.probe runs; their points are modules in execution order).</p>")
    elif worst.empty:
        some_without = (table["class"] == compare.NO_THEORY).any()
        out.append("<p>Every run with a theory agrees with it.</p>" if some_without
                   else "<p>Every run agrees with its theory.</p>")
    else:
        n_bad = int((~settled).sum())
        out.append(f"<p>The worst {len(worst)} of {n_bad} run(s) that do not simply agree:</p>")
        cols = [*rep.swept, "class", "severity", "reason"]
        out.append(_table(worst[[*cols, "run"]], row_class=_class_row,
                          formats={"severity": _severity}))
    return [*out, "</section>"]


def _k_text(rep: Report) -> str:
    if rep.k is not None:
        return f"k = {rep.k:g} at every point (set by --k)."
    return (f"k is Bonferroni's threshold Φ⁻¹(1 − α/2m) for the run's m points at family-wise "
            f"false-positive rate α = {rep.alpha:g} (column <i>k</i>), so a run whose theory is "
            f"right is flagged with probability ≤ α.")


def _blank(x: object) -> bool:
    """True for an empty string or a null (None, NaN, pd.NA)."""
    return x is None or (isinstance(x, str) and x == "") or bool(pd.isna(x))


def render(rep: Report) -> str:
    """The report as one HTML document with every figure embedded."""
    v = versions()
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>harness report: {_esc(str(rep.root))}</title><style>{CSS}</style></head><body>",
        f"<h1>harness report: {_esc(str(rep.root))}</h1>",
        f"<p class='meta'>{rep.n_runs} run(s); generated {datetime.now():%Y-%m-%d %H:%M:%S} by "
        f"harness {_esc(v.get('harness', '?'))} (commit {_esc(git_commit() or 'unknown')}), "
        f"torch {_esc(v.get('torch', '?'))}</p>",
        "<nav><a href='#triage'>triage</a><a href='#config'>configuration</a>"
        "<a href='#summary'>sweep summary</a><a href='#agreement'>agreement</a>"
        "<a href='#figures'>figures</a><a href='#reproduce'>reproduce</a></nav>",
        *triage_html(rep),
        "<h2 id='config'>Configuration</h2>",
        "<p class='fixed'><b>swept:</b> " + ("; ".join(
            f"{_esc(k)} = {', '.join(_esc(short_value(x)) for x in rep.levels[k])}" for k in rep.swept)
            or "nothing (one configuration)") + "</p>",
        "<p class='fixed'><b>fixed:</b> " + ", ".join(
            f"{_esc(k)} = {_esc(short_value(x)) if not _blank(x) else '(none)'}"
            for k, x in rep.fixed.items()) + "</p>",
    ]
    parts += _summary_html(rep)
    parts += [
        "<h2 id='agreement'>Agreement: measured vs theory per configuration</h2>",
        f"<p>One row per run, sorted by <b>class</b> (rules in the triage block above), then by "
        f"<b>severity</b>. <b>worst at</b>: the run's worst significant departure (else its worst "
        f"point), where <b>mean vs theory</b> and <b>median vs theory</b> are the replicate mean "
        f"and median against the prediction (a factor for positive quantities, a difference for "
        f"signed ones such as the correlation) and <b>tail</b> says when the mean is carried by a "
        f"few replicates. Then the worst |log10(measured/theory)| of forward and backward over "
        f"layers, and at how many (quantity, layer) points theory lies within k standard errors "
        f"of the replicate mean and within the replicates' min–max range (the band in the "
        f"figures). {_k_text(rep)} Click a header to sort; type in the box to filter.</p>",
        _agreement_html(rep.agreement),
        "<h2 id='figures'>Figures</h2>",
    ]
    parts += [f"<p class='meta'>{_esc(n)}</p>" for n in rep.notes]
    for f in rep.figures:
        data = base64.b64encode(f.png).decode()
        parts.append(f"<figure><img alt='{_esc(f.caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{_esc(f.caption)} ({_esc(f.name)})</figcaption></figure>")
    parts += ["<h2 id='reproduce'>Reproduce each run</h2>",
              _table(rep.commands[["run", "command"]], code=("command",), sortable=True),
              f"<script>{SCRIPT}</script></body></html>"]
    return "\n".join(parts)


def _summary_html(rep: Report) -> list[str]:
    out = ["<h2 id='summary'>Sweep summary</h2>"]
    if rep.unreadable:
        out.append(f"<p class='bad'>{len(rep.unreadable)} {METRICS} unreadable (will be recomputed "
                   "on resume): " + ", ".join(f"<code>{_esc(f)}</code>" for f in rep.unreadable) + "</p>")
    if not rep.jobs:
        return out + [f"<p>No sweep status here: {rep.n_runs} complete run(s) loaded.</p>"]
    counts = sweep.summarize(rep.jobs)
    spans = "".join(f"<span class='{s}'>{counts[s]} {'interrupted' if s == 'running' else s}</span>"
                    for s in sweep.STATES)
    out += [f"<p class='counts'><span>{counts['jobs']} job folders</span>{spans}</p>",
            f"<p>{rep.n_runs} complete result(s) loaded. Each job folder's latest state: "
            "<i>skipped</i> = its complete result from an earlier run of the sweep was kept.</p>"]
    for s in rep.sweeps:
        line = (f"<p>sweep <code>{_esc(s['dir'])}</code>: {_esc(s.get('state', '?'))}"
                + (f", last run: {s['done']} done, {s['skipped']} skipped, {s['failed']} failed, "
                   f"{s['running']} interrupted, finished {_esc(s.get('finished', '?'))}"
                   if "done" in s else "") + "</p>")
        out.append(line)
        if s.get("command"):
            out.append("<p>rerun (resumes: complete jobs are skipped): "
                       f"<code>{_esc(s['command'])}</code></p>")
    bad = [j for j in rep.jobs if j.get("state") in ("failed", "running")]
    if bad:
        frame = pd.DataFrame({"job": [Path(j["job_dir"]).name for j in bad],
                              "state": [("interrupted" if j["state"] == "running" else j["state"])
                                        for j in bad],
                              "error": [j.get("message") or "" for j in bad]})
        out.append(_table(frame, row_class=lambda r: "bad"))
    return out


def write(rep: Report, out_dir: str | Path) -> Path:
    """Write report.html and the PNGs into `out_dir` (atomically, file by file); stale figure
    files of an earlier report there are removed. Returns the path of report.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {f.name for f in rep.figures}
    for f in rep.figures:
        atomic_write_bytes(out / f.name, f.png)
    for old in out.glob("fig-*.png"):
        if old.name not in names:
            old.unlink(missing_ok=True)
    page = out / "report.html"
    atomic_write_bytes(page, render(rep).encode())
    return page


# ---- command line -------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> Path:
    """`python -m harness.report PATH [--out DIR] [--k K | --alpha A]`; exit 2 with one line on bad input."""
    p = ArgumentParser(prog="python -m harness.report", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="a run directory, a sweep directory, a folder of runs, or a metrics.parquet")
    p.add_argument("--out", help="output folder (default: PATH/report)")
    p.add_argument("--k", type=float, default=None,
                   help="agreement: theory within k standard errors of the replicate mean at every "
                        "point (default: Bonferroni's k for the run's points at --alpha)")
    p.add_argument("--alpha", type=float, default=compare.ALPHA,
                   help=f"family-wise false-positive rate of the default test (default {compare.ALPHA:g})")
    args = p.parse_args(argv)
    if args.k is not None and not (math.isfinite(args.k) and args.k > 0):
        p.error(f"--k must be a finite number > 0; got {args.k}")
    if not (0 < args.alpha < 1):
        p.error(f"--alpha must be between 0 and 1; got {args.alpha}")
    path = p.check_path(args.path)
    base = path if path.is_dir() else path.parent
    out = p.check_out(args.out if args.out else base / "report", folder=True)
    try:
        rep = build(path, k=args.k, alpha=args.alpha)
    except FileNotFoundError as e:
        p.error(f"{e} (expected a run or sweep directory holding {METRICS} files)")
    page = write(rep, out)
    n_fail = sum(j.get("state") == "failed" for j in rep.jobs)
    print(f"report: {page} ({rep.n_runs} runs, {len(rep.figures)} figures"
          + (f", {n_fail} failed jobs listed" if n_fail else "")
          + (f", {len(rep.unreadable)} unreadable {METRICS} listed" if rep.unreadable else "") + ")")
    return page


if __name__ == "__main__":
    main()
