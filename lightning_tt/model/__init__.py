"""The two-tower model: towers, corrected loss, frequency estimator, LightningModule."""
