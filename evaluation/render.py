"""Text samples as a picture: what `dvc plots show` / `dvc plots diff` can put side by side for text generators,
as it does the sample grid of image generators. Pure: texts in, PNG bytes out."""

from __future__ import annotations

import io
import textwrap

WIDTH_CHARS, LINES_PER_SAMPLE, FONT_SIZE = 96, 6, 14


def text_png(texts: list[str], *, title: str = "", width_chars: int = WIDTH_CHARS,
             lines_per_sample: int = LINES_PER_SAMPLE, font_size: int = FONT_SIZE) -> bytes:
    """Return a PNG with each text wrapped at `width_chars` and cut to `lines_per_sample` lines, numbered and
    separated by a rule; control characters are shown as spaces. An empty list renders "(no samples)"."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=font_size)
    blocks = []
    for i, text in enumerate(texts):
        clean = "".join(ch if ch.isprintable() else " " for ch in text.replace("\n", " / "))
        lines = textwrap.wrap(clean, width_chars, replace_whitespace=False, drop_whitespace=True) or [""]
        if len(lines) > lines_per_sample:
            lines = lines[: lines_per_sample - 1] + [lines[lines_per_sample - 1][: width_chars - 3] + "..."]
        blocks.append([f"#{i}"] + lines)
    if not blocks:
        blocks = [["(no samples)"]]
    line_h = font_size + 4
    left, top = 8, 8 + (line_h + 4 if title else 0)
    width = left * 2 + int(font.getlength("n" * width_chars))
    height = top + sum(len(b) * line_h + 8 for b in blocks) + 8
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((left, 8), title, fill="black", font=font)
    y = top
    for block in blocks:
        draw.line([(left, y), (width - left, y)], fill=(200, 200, 200))
        y += 4
        for j, line in enumerate(block):
            draw.text((left, y), line, fill=(120, 120, 120) if j == 0 else "black", font=font)
            y += line_h
        y += 4
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
