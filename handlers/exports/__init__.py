"""Exports from a DICOM store to Cloud Storage: requests validated before any call, and the job that runs them."""
