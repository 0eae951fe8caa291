"""Reconcile: find the objects no event announced, and admit them (docs/reconcile.md).

``progress`` (the checkpoint and the sweep in progress, in the state bucket),
``sweep`` (list, filter by creation time, check coverage, admit), ``report``
(the ``dicom-reconcile-result/v1`` message).
"""
