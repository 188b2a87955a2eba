"""Benchmarks: scripts that print markdown tables and write PNG charts (`python -m benchmarks.NAME --help`)."""
