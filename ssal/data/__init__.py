from ssal.data.datasets import DATASETS, ImageDataset, Split, load_dataset
from ssal.data.pool import ActivePool

__all__ = ["DATASETS", "ActivePool", "ImageDataset", "Split", "load_dataset"]
