"""The ``drizzle-ml`` command line and the launcher that supervises ``mpiexec``."""
