"""Pruning criteria: which units of a group go first and what each level costs (magnitude, Wanda,
structured OBS with calibration, data-free OBSPA), with the Hessian and second-moment machinery."""
