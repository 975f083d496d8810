"""Draws the layout of the template's CloudWatch dashboard as docs/dashboard.svg.

The picture is made from the `Dashboard` resource of template.yaml alone: each widget where
CloudWatch puts it on its 24-column grid, with its title and the series it plots, and the
alarm widget with every alarm it lists. Run from infra/ with the project's virtualenv:

    ../.venv/bin/python dashboard_picture.py          # writes ../docs/dashboard.svg
    ../.venv/bin/python dashboard_picture.py --check  # fails when the picture is out of date
"""

import html
import json
import re
import sys

from samcli.yamlhelper import yaml_parse

SOURCE = "template.yaml"
TARGET = "../docs/dashboard.svg"
COLUMN = 46  # pixels per grid column
ROW = 34  # pixels per grid row
GAP = 6
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def dashboard(template):
    """The dashboard body as JSON, with `${…}` left as the names they stand for."""
    sub = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    text, variables = sub[0], sub[1]
    samples = {"Namespace": "AutoKitteh/MicrosoftOAuth", "WarningDays": "30"}
    missing = set(variables) - set(samples)
    if missing:
        raise SystemExit(f"dashboard_picture.py does not know the variables {sorted(missing)}")

    def value(match):
        name = match.group(1)
        return samples.get(name, name.removesuffix(".Arn"))

    return json.loads(re.sub(r"\$\{([^}]+)\}", value, text))


def series(properties):
    """The labels of what a metric widget plots (hidden inputs of expressions left out)."""
    labels = []
    for spec in properties.get("metrics", []):
        options = spec[-1] if isinstance(spec[-1], dict) else {}
        if options.get("visible") is False:
            continue
        if "expression" in options:
            expression = options["expression"]
            found = re.search(r'MetricName="([^"]+)"', expression)
            if expression.startswith("SEARCH") and found:
                labels.append(f"{found.group(1)}, one line per dimension value")
            else:
                labels.append(options.get("label") or expression)
            continue
        words = [w for w in spec if isinstance(w, str)]
        stat = options.get("stat", properties.get("stat", ""))
        labels.append(options.get("label") or f"{words[1]} ({stat})")
    return labels


def text(x, y, value, size=11, weight="normal", color="#16191f"):
    return (
        f'<text x="{x}" y="{y}" font-size="{size}" font-weight="{weight}" fill="{color}">'
        f"{html.escape(value)}</text>"
    )


def widget_svg(widget):
    x = widget["x"] * COLUMN + GAP
    y = widget["y"] * ROW + GAP
    width = widget["width"] * COLUMN - GAP
    height = widget["height"] * ROW - GAP
    properties = widget["properties"]
    parts = [
        f'<rect x="{x}" y="{y}" width="{width}" height="{height}" rx="4" '
        'fill="#ffffff" stroke="#c6c6cd"/>',
        text(x + 10, y + 20, properties.get("title", ""), 13, "bold"),
    ]
    if widget["type"] == "alarm":
        alarms = properties["alarms"]
        per_row = 4
        chip = (width - 20) // per_row
        for i, alarm in enumerate(alarms):
            cx = x + 10 + (i % per_row) * chip
            cy = y + 32 + (i // per_row) * 18
            parts.append(
                f'<rect x="{cx}" y="{cy}" width="{chip - 6}" height="15" rx="3" fill="#f2f8f0" '
                'stroke="#1d8102"/>'
            )
            parts.append(text(cx + 5, cy + 11, alarm, 10))
        return parts
    kind = "stacked" if properties.get("stacked") else properties.get("view", "timeSeries")
    period = properties.get("period", 300)
    parts.append(text(x + width - 10 - 7 * 16, y + 20, f"{kind}, {period} s", 10, color="#5f6b7a"))
    labels = series(properties)
    shown = labels[: (height - 40) // 15]
    for i, label in enumerate(shown):
        ly = y + 40 + i * 15
        color = PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{x + 10}" y="{ly - 8}" width="10" height="10" fill="{color}"/>')
        parts.append(text(x + 26, ly + 1, label[:52], 10))
    if len(labels) > len(shown):
        parts.append(text(x + 26, y + height - 8, f"and {len(labels) - len(shown)} more", 10))
    return parts


def picture(body):
    widgets = body["widgets"]
    width = 24 * COLUMN + GAP
    height = max(w["y"] + w["height"] for w in widgets) * ROW + GAP
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
        f'<rect width="{width}" height="{height}" fill="#f2f3f3"/>',
    ]
    for widget in widgets:
        parts.extend(widget_svg(widget))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv):
    with open(SOURCE, encoding="utf-8") as f:
        drawn = picture(dashboard(yaml_parse(f.read())))
    if "--check" in argv:
        try:
            with open(TARGET, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current != drawn:
            print(f"{TARGET} is not the template's dashboard: run make dashboard-picture")
            return 1
        print(f"{TARGET} matches the template's dashboard")
        return 0
    with open(TARGET, "w", encoding="utf-8") as f:
        f.write(drawn)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
