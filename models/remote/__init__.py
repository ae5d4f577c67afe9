"""Self-contained transformers modeling code shipped inside SqrtGate / shared-expert export directories.

These files are copied verbatim next to ``config.json`` by :func:`models.hf.export_dir`; they may import only
``torch``, ``transformers`` and each other (relative import), never this repository.
"""
