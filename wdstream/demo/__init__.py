"""The main job (``wdstream demo``): sample data, a loopback S3, conversion, verification, a
preview, and a tiny model trained on the loader's batches. Imports torch, datasets and moto:
import :mod:`wdstream.demo.run` only when the demo runs."""
