"""Toy experiments for the sweep tests (``twinjax --package tests.sweep_pkg sweep ...``)."""
