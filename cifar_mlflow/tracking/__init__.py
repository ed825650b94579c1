"""The one layer that talks to MLflow: the connection, the run lifecycle, what each command
records, and what compare, export and sweep read back. Nothing outside this package imports
mlflow (tests/test_architecture.py checks); its modules are imported one by one, so a command
pays only for what it uses (compare never loads torch)."""
