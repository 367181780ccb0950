"""State that outlives a flow process: incremental snapshots and the model store."""
