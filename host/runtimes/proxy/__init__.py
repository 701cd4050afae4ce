"""The credential proxy: the model API seen by runners through a unix socket, with its policy and limits."""
