"""A small server-rendered SVG plot: LV area over the frames with ED and ES marked."""

from html import escape


def area_plot_svg(areas: list[float], ed: list[int], es: list[int], unit: str, width: int = 640,
                  height: int = 200) -> str:
    if not areas:
        return ""
    left, right, top, bottom = 48, 12, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    high = max(areas) or 1.0
    n = len(areas)

    def x(i):
        return left + (plot_w * i / max(n - 1, 1))

    def y(v):
        return top + plot_h * (1 - v / high)

    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(areas))
    parts = [
        f'<svg class="area-plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="LV area over {n} frames" data-x0="{left}" data-x1="{left + plot_w}" data-y0="{top}" '
        f'data-y1="{top + plot_h}">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="4" y="{top + 10}" font-size="11">{high:.1f}</text>',
        f'<text x="4" y="{top + plot_h}" font-size="11">0</text>',
        f'<text x="{left}" y="{height - 6}" font-size="11">frame 1</text>',
        f'<text x="{left + plot_w - 40}" y="{height - 6}" font-size="11">frame {n}</text>',
        f'<text x="{left + plot_w / 2 - 40}" y="{height - 6}" font-size="11">LV area ({escape(unit)})</text>',
        f'<polyline fill="none" stroke="#d33" stroke-width="2" points="{points}"/>',
    ]
    for frames, colour, label in ((ed, "#0b6bcb", "ED"), (es, "#067647", "ES")):
        for i in frames:
            parts.append(f'<line class="{label.lower()}" x1="{x(i):.1f}" y1="{top}" x2="{x(i):.1f}" '
                         f'y2="{top + plot_h}" stroke="{colour}" stroke-dasharray="4 3"/>')
            # a link to the page at that frame; the image page's player shows it in place
            parts.append(f'<a href="?frame={i + 1}" data-seek-frame="{i + 1}"><text x="{x(i) + 2:.1f}" y="{top + 10}" '
                         f'font-size="11" fill="{colour}">{label} {i + 1}</text></a>')
    parts.append("</svg>")
    return "".join(parts)
