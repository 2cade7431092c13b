"""The training system: the LightningModule(s), losses, callbacks and `run(cfg)` (see train/README.md)."""
