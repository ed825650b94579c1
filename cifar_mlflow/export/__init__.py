"""`cifar-mlflow export` and `predict`: the best run of a model family registered as its
champion, exported for deployment and evaluated; predictions from it for image files."""
