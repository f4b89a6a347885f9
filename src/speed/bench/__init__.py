"""Benchmarks callable from the CLI (``speed bench ...``); scripts in ``benchmarks/`` wrap them."""
