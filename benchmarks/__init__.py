"""The benchmark suite users run: ``python -m benchmarks`` (``make bench``)."""
