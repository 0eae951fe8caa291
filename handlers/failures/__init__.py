"""Failed files of an import batch: named, classified, verified, and acted on (docs/design.md, "Failures").

``header`` reads a DICOM file's UIDs without pydicom (the deployed function stays lean);
``kinds`` classifies the API's per-file error messages; ``collect`` reads Cloud Logging and
verifies what it did not list; ``policies`` tags or quarantines failed files; ``readmit``
imports objects again (conflict replacement, operator retry) in a batch of their own.
"""
