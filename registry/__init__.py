"""MLflow: tracking connection, lineage tags, data and model cards, the champion gate."""
