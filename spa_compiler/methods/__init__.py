"""Compression methods the search chooses between (the Method protocol in base.py; pruning.py first)."""
