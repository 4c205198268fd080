"""Local development only: what runs Assay on one machine, never what is deployed.

``emulators`` starts the Google Cloud stand-ins (the test suite's and the local stack's),
``snapshot`` keeps the Datastore emulator's data across restarts, ``localstack`` is
``make up`` / ``make down`` / ``make reset``, ``digits`` trains the small model and writes
the datasets that the tests, the demo and the benchmarks use, and ``demo`` is ``make demo``.

No deployed package (``shared``, ``functions``, ``daemon``, ``workers``) and not the SDK
(``assay``) may import this one; import-linter holds that (``pyproject.toml``), and no
image or staged function copies it.
"""
