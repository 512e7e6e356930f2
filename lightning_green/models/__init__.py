"""Configurable networks and the LightningModule that trains them."""

from lightning_green.models.lit import LitClassifier, count_params
from lightning_green.models.nets import ACTIVATIONS, DenseNet, SimpleCNN, torchvision_model
from lightning_green.models.transformer import TransformerClassifier

__all__ = [
    "ACTIVATIONS",
    "DenseNet",
    "LitClassifier",
    "SimpleCNN",
    "TransformerClassifier",
    "count_params",
    "torchvision_model",
]
