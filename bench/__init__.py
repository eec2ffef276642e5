"""picostim benchmarks (`make bench`): one module per BENCHMARKS.md table, run by bench/run_all.py."""
