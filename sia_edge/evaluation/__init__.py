"""Evaluation: does steering a few uncertain tokens buy most of the alignment of steering all of them, and does
choosing them by entropy matter? See run.py for the method; arms.py, stats.py and report.py for the parts."""
