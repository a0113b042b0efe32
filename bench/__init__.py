"""netmedic's benchmarks (`make bench` = `python -m bench`; not part of `make test`).

Every figure is measured together with its baseline in the same run, repeated, and reported as
median and spread, because the machines this runs on are shared and noisy. Everything happens in
network namespaces of a netmedic.lab.Topology created and removed by the run (even on failure).
docs/benchmarks.md is written from the results.
"""
