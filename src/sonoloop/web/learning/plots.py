"""Training curves as a small server-rendered SVG: loss and mean Dice per epoch."""


def curves_svg(history: list[dict], width: int = 640, height: int = 220) -> str:
    """``history``: [{"epoch", "train_loss", "val_dice": {structure: Dice}}] as model.json keeps it."""
    if not history:
        return ""
    left, right, top, bottom = 44, 44, 12, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(history)
    losses = [h["train_loss"] for h in history]
    dice = [sum(h["val_dice"].values()) / max(len(h["val_dice"]), 1) for h in history]
    high = max(losses) or 1.0

    def x(i):
        return left + plot_w * i / max(n - 1, 1)

    def y(fraction):
        return top + plot_h * (1 - fraction)

    loss_points = " ".join(f"{x(i):.1f},{y(v / high):.1f}" for i, v in enumerate(losses))
    dice_points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(dice))
    return "".join([
        f'<svg class="curves" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="training loss and validation Dice over {n} epochs">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="2" y="{top + 10}" font-size="11" fill="#d33">{high:.3f}</text>',
        f'<text x="2" y="{top + plot_h}" font-size="11" fill="#d33">0</text>',
        f'<text x="{left + plot_w + 4}" y="{top + 10}" font-size="11" fill="#0b6bcb">1.0</text>',
        f'<text x="{left + plot_w + 4}" y="{top + plot_h}" font-size="11" fill="#0b6bcb">0</text>',
        f'<text x="{left}" y="{height - 8}" font-size="11">epoch 1</text>',
        f'<text x="{left + plot_w - 50}" y="{height - 8}" font-size="11">epoch {n}</text>',
        f'<text x="{left + plot_w / 2 - 90}" y="{height - 8}" font-size="11">'
        f'<tspan fill="#d33">training loss</tspan> · <tspan fill="#0b6bcb">mean validation Dice</tspan></text>',
        f'<polyline class="loss" fill="none" stroke="#d33" stroke-width="2" points="{loss_points}"/>',
        f'<polyline class="dice" fill="none" stroke="#0b6bcb" stroke-width="2" points="{dice_points}"/>',
        "</svg>",
    ])
