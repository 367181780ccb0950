"""Control plane: ``adctl`` (retrain on Dask, live model updates, run/scale, status)."""
