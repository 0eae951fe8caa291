"""The Healthcare API emulator, as a real process against a real fake-gcs-server."""
