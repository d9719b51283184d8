"""Accuracy/latency harness: every engine is measured against the FP32 reference, in the same run."""
