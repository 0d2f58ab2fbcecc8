"""`jobs prepare`: raw text to train.bin / val.bin / data_meta.json (see pipeline.py)."""

from jobs.prepare.pipeline import check_data, data_is_valid, run_prepare

__all__ = ["check_data", "data_is_valid", "run_prepare"]
