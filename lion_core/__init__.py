"""lion-distill's domain library: everything Lion needs, with no Prefect in it."""

__version__ = "0.1.0"
