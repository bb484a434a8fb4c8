"""Prefect flows: orchestration only; the ML lives in tasks/ and models/."""
