"""`hydra/sweeper=optuna_grid`: a grid of scientific parameters x an Optuna search per cell."""
