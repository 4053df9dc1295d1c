"""Settings that point container runtimes (containerd, CRI-O and podman, Docker Engine) at the agent.

Each runtime module plans the files to write as FileChange values, from the
agent's config and the files already on disk. ``command`` shows or writes
them for ``registry-p2p agent configure``.
"""
