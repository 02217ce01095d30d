"""Data sets: the embedded MNIST digits (default), scikit-learn digits, CIFAR-10/100, ImageFolder,
synthetic. In-memory sets are served as uint8 tensors on the training device and augmented there
in batches; `load_data` returns one `DataSource` interface for all of them."""

from nascli.data.source import DataSource, load_data

__all__ = ["DataSource", "load_data"]
