"""Head mode: a frozen backbone's features, cached on disk, and small heads trained on them."""
