"""The agent: a pull-through registry endpoint on each node that fetches blobs over BitTorrent."""
