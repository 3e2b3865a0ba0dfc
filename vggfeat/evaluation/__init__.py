"""Evaluation: VOC metrics, linear-SVM probes, benchmark protocols and reports."""
