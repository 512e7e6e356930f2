"""Ray Tune studies with energy beside accuracy: grid, random, Bayesian, multi-objective."""
