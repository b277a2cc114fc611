"""lightning-tt: two-tower candidate retrieval for music (Yandex Yambda) with PyTorch Lightning."""

__version__ = "0.1.0"
