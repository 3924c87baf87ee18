"""Monarch matrices: the factorization and projection (`factor`), linear sites and emission
(`emit`), recognition of Monarch chains already in a graph (`recognize`)."""
