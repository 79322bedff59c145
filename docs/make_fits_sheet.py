"""Regenerate docs/fits.png, the README's picture of the three --fit modes.

    python docs/make_fits_sheet.py    # needs scikit-image for its sample photograph

A portrait photograph (scikit-image's astronaut, 300x512) into the landscape box 192x128,
through the real CPU stage (``process_image``), once per fit; the sheet frames each result
in its box and is quantised to 64 colours so it stays small.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import skimage.data
from PIL import Image, ImageDraw

from pipeline.config import ProcessOptions
from pipeline.image.process import process_image
from pipeline.store.local import Store

BOX = (192, 128)
GAP, LABEL = 16, 18


def main() -> None:
    source = Image.fromarray(skimage.data.astronaut()).crop((106, 0, 406, 512))
    data = io.BytesIO()
    source.save(data, "PNG")
    fits = [("contain", {}), ("cover", {}), ("pad", {"pad_color": "#203040"})]
    sheet = Image.new("RGB", (len(fits) * (BOX[0] + GAP) + GAP, BOX[1] + 2 * GAP + LABEL), "white")
    draw = ImageDraw.Draw(sheet)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (fit, extra) in enumerate(fits):
            options = ProcessOptions(sizes=(f"{BOX[0]}x{BOX[1]}",), fit=fit, thumb_format="png", **extra)
            info = process_image(data.getvalue(), options=options, store=Store(Path(tmp)))
            thumb = Image.open(Path(tmp) / info.thumbnails[0].path).convert("RGB")
            x, y = GAP + i * (BOX[0] + GAP), GAP
            draw.rectangle((x - 1, y - 1, x + BOX[0], y + BOX[1]), outline=(160, 160, 160))
            sheet.paste(thumb, (x + (BOX[0] - thumb.width) // 2, y + (BOX[1] - thumb.height) // 2))
            draw.text((x, y + BOX[1] + 4), f"--fit {fit}: {thumb.width}x{thumb.height}", fill="black")
    out = Path(__file__).with_name("fits.png")
    sheet.quantize(64, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
    print(out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
