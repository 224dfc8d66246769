"""Benchmarks of twinjax against baselines measured in the same process (DESIGN.md, "Performance principles").

Run one with ``python -m benchmarks NAME [--json PATH] [--quick]``; ``python -m benchmarks`` lists them. Each
benchmark is a module ``benchmarks/NAME.py`` exposing ``main(argv) -> int``; it measures compile time and run time
separately, asserts a single trace inside every timed function, prints a ratio table and writes
``{"times_s": …, "compile_s": …, "speedup": {baseline: baseline_s / twinjax_s}, …}`` so that > 1 means twinjax is
faster. Shared timing helpers live in :mod:`benchmarks._harness`.
"""
