"""The page of `run_metasegnet.py --serve`: paint a few examples, segment many images."""
