"""The ``imer`` command line (:mod:`imer.cli.app`), its progress display and its tables/JSON.

The only package that prints; each command parses, makes one library call and renders.
"""
