"""`jobs prepare`: raw text to train.bin / val.bin / data_meta.json (see pipeline.py).

The names below load pipeline.py (and with it `datasets`) on first use, so that
prepare's worker processes, which import only jobs.prepare.work, start fast.
"""

__all__ = ["check_data", "data_is_valid", "run_prepare"]


def __getattr__(name: str):
    if name in __all__:
        from jobs.prepare import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'jobs.prepare' has no attribute {name!r}")
