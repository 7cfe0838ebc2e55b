"""The benchmark suites behind tools/bench.py: mategemm beside its peers on one card (needs a GPU to run;
the result files' plots and the docs' tables are made without one)."""
