"""Clients of the Google services the function calls: Cloud Healthcare (REST), Pub/Sub, Cloud Storage."""
