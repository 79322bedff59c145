"""The image stage: one image's bytes in; thumbnails on disk, hashes, metadata (or an ItemError) out.

One job per module, roughly in the order an image meets them::

    process.py     one image, end to end: process_image (the entry point) and the resize chain
    formats.py     the allowlist, the decoders (HEIF by pillow-heif), sniffing, failure wording
    pixellimit.py  the pixel limit from the header; Pillow's bomb check kept no stricter
    decode.py      decoding once: JPEG draft, WebP scaled, mode normalised (_Decoded)
    webp.py        libwebp's scaling decoder through ctypes, on the library Pillow loaded
    orientation.py EXIF orientation: read from the header; its transposes and geometry
    fit.py         planning contain/cover/pad: what each output shows, at which size and scale
    resize.py      the chain's pixels: a part of the displayed image resized, padding, flattening
    colour.py      ICC profiles: RGB converted to sRGB (littleCMS); what a thumbnail carries
    encode.py      a thumbnail encoded straight into a store temp file
    hashes.py      dHash and pHash (64 bits each, as imagehash)
    view.py        thumbnail_view: a thumbnail file as small arrays, for dedup's thumbnail check

Other stages use ``process.process_image``, ``hashes.dhash``/``phash`` and
``view.thumbnail_view``. Pillow is imported by this package only, but by most of its
modules (each handles pictures): fit.py, encode.py and process.py use it for type hints
only, webp.py not at all (numpy arrays). Names with a leading underscore are private to
this package. This file imports nothing, so that ``view`` or ``hashes`` loads without the
decoders.
"""
