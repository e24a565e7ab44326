"""The embedded CPU demo: a synthetic shapes-and-colours task, tiny base models, and the run script."""
