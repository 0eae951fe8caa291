"""Cloud Healthcare API emulator: ``python -m emulator --host 127.0.0.1 --port N`` (see docs/emulator.md)."""
