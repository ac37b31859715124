"""streamtrain: streaming online training of two-tower retrievers from Kafka."""

__all__ = ["__version__"]

__version__ = "0.1.0"
