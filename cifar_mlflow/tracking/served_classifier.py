"""A CIFAR-10 classifier as MLflow serves it: a checkpoint's exported program (pt2, among the
model's files) behind a predict that answers with class names and probabilities.

Not imported by the package: `cifar-mlflow export` copies this file into the model it registers,
and MLflow runs it when that model is served (`mlflow models serve`) or loaded with
`mlflow.pyfunc` (MLflow's models from code: no pickle). Loading the same model with
`mlflow.pytorch` runs none of it. It needs torch, numpy, pandas and mlflow only.
"""

import mlflow
import numpy as np
import pandas as pd
import torch


class NamedClasses(mlflow.pyfunc.PythonModel):
    """Images (N, 3, 32, 32), RGB floats in [0, 1], in; for each, the most probable class, its
    probability, and every class's probability (columns named by class) out."""

    def load_context(self, context):
        self.network = torch.export.load(context.artifacts["program"]).module()
        self.classes = list(context.model_config["classes"])

    # np.ndarray: a hint MLflow takes without inferring a schema from it (the model's signature
    # is logged with it), so it does not warn that predict has none.
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            probabilities = torch.softmax(self.network(images), dim=1).numpy()
        answer = pd.DataFrame(probabilities, columns=self.classes)
        answer.insert(0, "probability", probabilities.max(axis=1))
        answer.insert(0, "class", [self.classes[i] for i in probabilities.argmax(axis=1)])
        return answer


mlflow.models.set_model(NamedClasses())
