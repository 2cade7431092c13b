"""Evaluation: the protocol's mIoU against the teacher and against ground truth, its records and its report."""
