# Benchmarks (issue 4). Each writes its figures into its own section of BENCHMARKS.md;
# bench-quick is a smoke run of every path that writes build/BENCHMARKS.quick.md instead.
# --postgres: the workers benchmark runs a throwaway PostgreSQL (tests/harness/pgserver.py).
.PHONY: bench bench-quick

bench:
	bash scripts/bootstrap.sh --smtp-sink --postgres && .venv/bin/python -m benchmarks

bench-quick:
	bash scripts/bootstrap.sh --smtp-sink --postgres && .venv/bin/python -m benchmarks --quick
