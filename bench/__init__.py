"""meterapi's benchmark suite: ``python -m bench`` (see ``bench/run.py``) and ``bench/soak.py``."""
