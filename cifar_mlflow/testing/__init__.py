"""What the tests and the benchmarks share: a real local `mlflow server`, tiny CIFAR-10-shaped
data in both layouts, and synthetic training runs. Nothing in the product imports this package;
like the tests, it may call MLflow directly."""
