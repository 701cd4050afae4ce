"""Where runners run: the Runtime protocol, Docker and local runtimes, the runner pool, the image, the model proxy."""
