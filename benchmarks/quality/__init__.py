"""Quality evaluation harness of the real models (issue 5): see `benchmarks.quality.evaluate` and
``python -m benchmarks.quality.run --help``."""
