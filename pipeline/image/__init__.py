"""The image stage: bytes of one image -> thumbnails, hashes and metadata (``process.process_image``)."""
