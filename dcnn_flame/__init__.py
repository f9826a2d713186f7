"""dcnn-flame: DCNN-FLAME face reconstruction, training and batch generation on Ray."""

__version__ = "0.1.0"
