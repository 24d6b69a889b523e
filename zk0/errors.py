"""One exception type for every problem a user can fix: the CLI prints it as one line and exits 2."""


class Zk0Error(Exception):
    """A user-facing error: bad config, bad dataset, unreachable hub. The message is the whole story."""
