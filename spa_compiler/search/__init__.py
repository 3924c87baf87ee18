"""The search: a multiple-choice knapsack over per-site variants (knapsack.py) and the
measure-and-correct loop that meets a measured latency budget."""
