"""Command-line interface: ``speed <command>``; each command lives in its own ``*_cmd`` module."""
