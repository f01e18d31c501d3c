"""Dataset readers and the sequence DataModule. Knows nothing of models, memory or metrics."""

from datamodules.contract import IGNORE_INDEX, DataError, validate_sample
from datamodules.vocabulary import Vocabulary

__all__ = ["IGNORE_INDEX", "DataError", "Vocabulary", "validate_sample"]
