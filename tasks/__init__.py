"""Pipeline stages: one module per stage, each a function that DVC runs as a process and Prefect as a task."""
