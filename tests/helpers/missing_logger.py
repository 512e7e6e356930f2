"""A logger factory whose package is missing, as MLFlowLogger is without MLflow installed."""


def make() -> None:
    raise ModuleNotFoundError("No module named 'mlflow'", name="mlflow")
