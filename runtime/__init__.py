"""What every entry point shares: user errors, atomic file IO, the workspace lock, device choice, import closures."""

# The project's top-level packages: their loggers are the project's logs (Prefect shows them when
# PREFECT_LOGGING_EXTRA_LOGGERS names them, as the Makefile does).
PACKAGES = ("tasks", "flows", "models", "config", "runtime", "cli", "dataprep", "training", "evaluation", "registry",
            "serving")
