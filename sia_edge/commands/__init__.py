"""The command layer: click commands and what only commands need (shared options, Ctrl-C, engine building).

Everything here may import the library below it (sia_edge.engine, settings, calibration, evaluation, ...); nothing
in the library imports from here (tests/test_layers.py checks it).
"""
