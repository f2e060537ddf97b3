"""Orchestration: run configs, the stages, the Prefect flow and the command line."""
