"""Data files shipped with featx: the CIFAR-10 sample (see scripts/build_sample.py)."""
