"""Ray Tune searches over training runs (jobs/tune.py): spaces, the driver, tables and plots."""
