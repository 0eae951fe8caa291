"""The life of an import batch: intake, the driver, its follow-up messages, its result (docs/design.md)."""
