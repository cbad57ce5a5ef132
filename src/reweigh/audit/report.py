"""The HTML report of a diff: one self-contained file, readable offline (pure).

Charts are inline SVG written here (the ranked layer chart, the confusion
difference as a heat map, trigger success per class, KL per prompt); input
pictures are drawn on canvases by a short inline script from data embedded in
the page. Nothing is fetched: no external URL, font, style sheet or script, so
the page can be archived with the evidence it shows. The script writes a marker
into the page (`data-rendered`, and the status line) once it has drawn, so a page
whose script failed is visibly, and testably, incomplete.

Every value from the report is escaped (`html.escape` for markup, JSON with `<`
escaped for the embedded data): prompts and file names are untrusted text.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

BAR_WIDTH = 360
ROW = 18
CHART_ROWS = 40

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em;
       color: #1d1d1f; background: #fff; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
code, .mono { font-family: ui-monospace, monospace; font-size: 0.92em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
.flagged { color: #b00020; font-weight: 600; }
tr.flagged td { background: #fdecee; }
.ok { color: #1b7f3b; font-weight: 600; }
.pictures { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; text-align: center; font-size: 0.85em; }
canvas { image-rendering: pixelated; border: 1px solid #ccc; }
#reweigh-status { color: #777; font-size: 0.85em; }
"""

SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("reweigh-data").textContent);
  var drawn = 0;
  Object.keys(data.pictures).forEach(function (id) {
    var image = data.pictures[id], canvas = document.getElementById(id);
    if (!canvas || !image) { return; }
    var channels = image.length, height = image[0].length, width = image[0][0].length;
    var scale = Math.max(1, Math.floor(96 / Math.max(height, width)));
    canvas.width = width * scale; canvas.height = height * scale;
    var ctx = canvas.getContext("2d");
    for (var r = 0; r < height; r++) {
      for (var c = 0; c < width; c++) {
        var v = [0, 1, 2].map(function (k) {
          var x = image[Math.min(k, channels - 1)][r][c];
          return Math.round(255 * Math.min(1, Math.max(0, x)));
        });
        ctx.fillStyle = "rgb(" + v.join(",") + ")";
        ctx.fillRect(c * scale, r * scale, scale, scale);
      }
    }
    drawn++;
  });
  document.body.setAttribute("data-rendered", "yes");
  document.getElementById("reweigh-status").textContent =
    "rendered: " + drawn + " pictures drawn by the page's script";
})();
"""


def render_html(report: dict[str, Any]) -> str:
    """The whole page for a diff report (the dict `DiffReport.to_json` gives)."""
    pictures: dict[str, Any] = {}
    body = [_summary(report), _layers(report), _behaviour(report.get("behaviour"), pictures),
            _trigger(report.get("trigger"), pictures), _text(report.get("text"))]
    data = json.dumps({"pictures": pictures}).replace("<", "\\u003c")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>reweigh diff: {_e(report['recipe'])}</title><style>{STYLE}</style>"
            f"</head><body data-rendered=\"no\">{''.join(body)}"
            f"<p id=\"reweigh-status\">not rendered: the page's script did not run</p>"
            f"<script type=\"application/json\" id=\"reweigh-data\">{data}</script>"
            f"<script>{SCRIPT}</script></body></html>\n")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _summary(report: dict[str, Any]) -> str:
    findings = report["findings"]
    verdict = (f"<p class=\"flagged\">{len(findings)} finding(s)</p><ul>"
               + "".join(f"<li>{_e(f)}</li>" for f in findings) + "</ul>") if findings \
        else "<p class=\"ok\">nothing flagged</p>"
    notes = "".join(f"<p>note: {_e(n)}</p>" for n in report["notes"])
    return (f"<h1>reweigh diff &mdash; {_e(report['recipe'])}</h1>"
            f"<table><tr><th>A (reference)</th><td class=\"mono\">{_e(report['a']['path'])}"
            f"<br>{_e(report['a']['digest'])}</td></tr><tr><th>B (suspect)</th>"
            f"<td class=\"mono\">{_e(report['b']['path'])}<br>{_e(report['b']['digest'])}"
            f"</td></tr></table>{verdict}{notes}")


def _layers(report: dict[str, Any]) -> str:
    """Ranked horizontal bars of relative L2 on a log scale, the flag threshold dashed."""
    layers = report["layers"][:CHART_ROWS]  # the table below lists every tensor
    values = [_number(layer["rel_l2"]) for layer in layers]
    top = max([v for v in values if 0 < v < math.inf] + [report["layer_threshold"], 1e-6])
    high = math.ceil(math.log10(top))
    low = min(high - 6, math.floor(math.log10(report["layer_threshold"])) - 1)
    left, height = 260, ROW * len(layers) + 30

    def x(value: float) -> float:
        if value <= 0:
            return left
        return left + BAR_WIDTH * (min(max(math.log10(value), low), high) - low) / (high - low)

    rows = []
    for i, (layer, value) in enumerate(zip(layers, values, strict=True)):
        y = 20 + i * ROW
        colour = "#b00020" if layer["flagged"] else "#7a8ca3"
        label = "identical" if layer["identical"] else f"{value:.3g}"
        rows.append(f"<text x=\"{left - 6}\" y=\"{y + 12}\" text-anchor=\"end\" "
                    f"font-size=\"11\">{_e(layer['name'])}</text><rect x=\"{left}\" y=\"{y + 2}\""
                    f" width=\"{x(value) - left:.1f}\" height=\"{ROW - 5}\" fill=\"{colour}\"/>"
                    f"<text x=\"{x(value) + 4:.1f}\" y=\"{y + 12}\" font-size=\"10\">{label}"
                    f"</text>")
    threshold = x(report["layer_threshold"])
    ticks = "".join(f"<text x=\"{x(10.0 ** p):.1f}\" y=\"12\" font-size=\"9\" "
                    f"text-anchor=\"middle\">1e{p}</text>" for p in range(low, high + 1, 2))
    svg = (f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{left + BAR_WIDTH + 80}\" "
           f"height=\"{height}\" role=\"img\" aria-label=\"relative L2 per tensor\">{ticks}"
           f"{''.join(rows)}<line x1=\"{threshold:.1f}\" x2=\"{threshold:.1f}\" y1=\"14\" "
           f"y2=\"{height}\" stroke=\"#b00020\" stroke-dasharray=\"4 3\"/></svg>")
    shown = "" if len(report["layers"]) <= CHART_ROWS else f" The {CHART_ROWS} most moved."
    table = "".join(
        f"<tr class=\"{'flagged' if layer['flagged'] else ''}\"><td class=\"mono\">"
        f"{_e(layer['name'])}</td><td>{_e(layer['shape'])}</td><td>{_fmt(layer['max_abs'])}"
        f"</td><td>{_fmt(layer['rel_l2'])}</td><td>{_fmt(layer['cosine_distance'])}</td></tr>"
        for layer in report["layers"])
    return (f"<h2>Weight space</h2><p>Relative L2 distance per tensor, most moved first (log "
            f"scale; dashed: the recipe's tolerance {report['layer_threshold']:g}, beyond which "
            f"a tensor is flagged).{shown}</p>{svg}<table><tr><th>tensor</th><th>shape</th>"
            f"<th>max abs</th><th>rel L2</th><th>cosine distance</th></tr>{table}</table>")


def _behaviour(section: dict[str, Any] | None, pictures: dict[str, Any]) -> str:
    if section is None:
        return ""
    accuracy = ""
    if "accuracy_a" in section:
        accuracy = f"; accuracy A {section['accuracy_a']:.4f}, B {section['accuracy_b']:.4f}"
    mark = "<span class=\"flagged\">flagged</span>" if section["flagged"] else ""
    parts = [f"<h2>Behaviour</h2><p>On {section['samples']} evaluation inputs the answers "
             f"differ on {section['disagreement']:.2%} (tolerance "
             f"{section['disagreement_threshold']:.2%}){accuracy} {mark}</p>"]
    if "confusion_difference" in section:
        parts.append("<h3>Confusion difference (B &minus; A)</h3><p>Rows: true class; "
                     "columns: answer. Red: B answers this more often; blue: less.</p>"
                     + heat_map(section["confusion_difference"]))
    parts.append(_classes(section["classes"]))
    parts.append(_diverging(section["diverging"], pictures))
    return "".join(parts)


def heat_map(matrix: list[list[int]]) -> str:
    """A signed integer matrix as coloured cells, the value written in each."""
    size = 30
    n = len(matrix)
    scale = max([abs(v) for row in matrix for v in row] + [1])
    cells = []
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            strength = abs(value) / scale
            fill = (f"rgba(176,0,32,{strength:.2f})" if value > 0 else
                    f"rgba(30,90,200,{strength:.2f})" if value < 0 else "#fafafa")
            cells.append(f"<rect x=\"{30 + c * size}\" y=\"{30 + r * size}\" width=\"{size}\" "
                         f"height=\"{size}\" fill=\"{fill}\" stroke=\"#ddd\"/>"
                         f"<text x=\"{30 + c * size + size / 2}\" y=\"{30 + r * size + 19}\" "
                         f"text-anchor=\"middle\" font-size=\"11\">{value or ''}</text>")
    labels = "".join(f"<text x=\"{30 + i * size + size / 2}\" y=\"22\" text-anchor=\"middle\" "
                     f"font-size=\"11\">{i}</text><text x=\"22\" y=\"{30 + i * size + 19}\" "
                     f"text-anchor=\"end\" font-size=\"11\">{i}</text>" for i in range(n))
    side = 40 + n * size
    return (f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{side}\" height=\"{side}\" "
            f"role=\"img\" aria-label=\"confusion difference\">{labels}{''.join(cells)}</svg>")


def _classes(rows: list[dict[str, Any]]) -> str:
    body = "".join(
        f"<tr class=\"{'flagged' if row['flagged'] else ''}\"><td>{row['class']}</td>"
        f"<td>{row['support']}</td><td>{row['answered_a']}</td><td>{row['answered_b']}</td>"
        f"<td>{row['moved_in']}</td><td>{row['moved_out']}</td>"
        f"<td>{_fmt(row.get('recall_a'))}</td><td>{_fmt(row.get('recall_b'))}</td></tr>"
        for row in rows)
    return ("<h3>Per class</h3><table><tr><th>class</th><th>inputs</th><th>answered by A</th>"
            "<th>by B</th><th>moved in</th><th>moved out</th><th>recall A</th><th>recall B</th>"
            f"</tr>{body}</table>")


def _diverging(rows: list[dict[str, Any]], pictures: dict[str, Any]) -> str:
    if not rows:
        return "<h3>Diverging inputs</h3><p>None: both networks give the same outputs.</p>"
    figures = []
    for row in rows:
        a, b = row["output_a"], row["output_b"]
        picture = ""
        if row.get("picture") is not None:
            pictures[f"input-{row['index']}"] = row["picture"]
            picture = f"<canvas id=\"input-{row['index']}\" width=\"96\" height=\"96\"></canvas>"
        label = "" if row["label"] is None else f"true {row['label']}<br>"
        figures.append(f"<figure>{picture}<figcaption>input {row['index']}<br>{label}"
                       f"A: {a['class']} ({a['probability']:.2f})<br>B: {b['class']} "
                       f"({b['probability']:.2f})<br>moved {row['distance']:.2f}</figcaption>"
                       "</figure>")
    return ("<h3>Diverging inputs</h3><p>The inputs whose output distributions moved most "
            f"(total variation distance).</p><div class=\"pictures\">{''.join(figures)}</div>")


def _trigger(section: dict[str, Any] | None, pictures: dict[str, Any]) -> str:
    if section is None or section["best"] is None:
        return ""
    best = section["best"]
    verdict = ("<span class=\"flagged\">flagged: B follows the patch, A does not</span>"
               if section["flagged"] else "<span class=\"ok\">not flagged</span>")
    parts = [f"<h2>Trigger search</h2><p>Best patch ({len(best['pixels'])} pixels, budget "
             f"{section['pixels']}): drives B to class <b>{best['class']}</b> on "
             f"{best['success_b']:.0%} of {best['victims']} unseen inputs, A on "
             f"{best['success_a']:.0%}. {verdict}</p><p class=\"mono\">pixels (row, column): "
             f"{_e(best['pixels'])}</p>"]
    example = section.get("example")
    if example and example.get("clean") is not None:
        pictures["trigger-clean"] = example["clean"]
        pictures["trigger-patched"] = example["patched"]
        parts.append(
            "<div class=\"pictures\"><figure><canvas id=\"trigger-clean\"></canvas>"
            f"<figcaption>input {example['index']}</figcaption></figure><figure>"
            "<canvas id=\"trigger-patched\"></canvas><figcaption>with the patch<br>"
            f"A: {example['answer_a']}, B: {example['answer_b']}</figcaption></figure></div>")
    parts.append(_success_chart(section["per_class"]))
    return "".join(parts)


def _success_chart(rows: list[dict[str, Any]]) -> str:
    """Per target class: B's success (dark) beside A's (light)."""
    width, gap = 22, 14
    bars = []
    for i, row in enumerate(rows):
        x0 = 30 + i * (2 * width + gap)
        for k, (key, colour) in enumerate((("success_b", "#b00020"), ("success_a", "#9bb"))):
            h = 120 * row[key]
            bars.append(f"<rect x=\"{x0 + k * width}\" y=\"{130 - h:.1f}\" width=\"{width - 2}\""
                        f" height=\"{h:.1f}\" fill=\"{colour}\"/>")
        bars.append(f"<text x=\"{x0 + width}\" y=\"145\" text-anchor=\"middle\" "
                    f"font-size=\"11\">{row['class']}</text>")
    total = 40 + len(rows) * (2 * width + gap)
    return (f"<p>Best patch per target class: success on B (red) and on A (grey).</p>"
            f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total}\" height=\"150\" "
            f"role=\"img\" aria-label=\"trigger success per class\"><line x1=\"28\" "
            f"x2=\"{total}\" y1=\"{130 - 96}\" y2=\"{130 - 96}\" stroke=\"#b00020\" "
            f"stroke-dasharray=\"4 3\"/>{''.join(bars)}</svg>")


def _text(section: dict[str, Any] | None) -> str:
    if section is None:
        return ""
    top = max([row["kl"] for row in section["prompts"]] + [1e-12])
    topics = "".join(
        f"<tr><td>{_e(t['topic'] or '(none)')}</td><td>{t['prompts']}</td>"
        f"<td>{t['mean_kl']:.4g}</td><td>{t['flagged']}</td></tr>" for t in section["topics"])
    rows = "".join(
        f"<tr class=\"{'flagged' if row['flagged'] else ''}\"><td>{row['rank']}</td>"
        f"<td>{_e(row['topic'])}</td><td>{_e(row['prompt'])}</td>"
        f"<td>{_e(row['continuation_a'])}</td><td>{_e(row['continuation_b'])}</td>"
        f"<td><svg width=\"80\" height=\"10\"><rect width=\"{80 * row['kl'] / top:.1f}\" "
        f"height=\"10\" fill=\"#b00020\"/></svg> {row['kl']:.3g}</td>"
        f"<td>{_e(row['promoted']['word'])} {row['promoted']['p_a']:.2f}&rarr;"
        f"{row['promoted']['p_b']:.2f}</td></tr>" for row in section["prompts"])
    return (f"<h2>Text probes</h2><p>{len(section['prompts'])} prompts, each continued for "
            f"{section['length']} tokens by both models; ranked by KL(A&nbsp;||&nbsp;B) in nats "
            "per token along both continuations. <i>Promoted</i>: the word B chose that A found "
            "least likely.</p><table><tr><th>topic</th><th>prompts</th><th>mean KL</th>"
            f"<th>flagged</th></tr>{topics}</table><table><tr><th>#</th><th>topic</th>"
            "<th>prompt</th><th>A writes</th><th>B writes</th><th>KL</th><th>promoted (p A"
            f"&rarr;B)</th></tr>{rows}</table>")


def _number(value: Any) -> float:
    return math.inf if value == "inf" else float(value)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if value == "inf":
        return "inf"
    return f"{float(value):.4g}"
