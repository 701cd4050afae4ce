"""Files the host opens in folders a runner can write: no link followed, private modes, the host lock."""
