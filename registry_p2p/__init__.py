"""registry-p2p: peer-to-peer distribution of Docker registry blobs."""

__version__ = "0.1.0"
