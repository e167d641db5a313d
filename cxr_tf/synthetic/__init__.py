"""Synthetic imitations of the datasets the package reads, for tests, the demo and the
benchmarks (not part of the data path): one module per imitation, listed in `layouts`."""
