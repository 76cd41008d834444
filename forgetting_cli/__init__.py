"""The ``forget`` command line. Offline and telemetry-free settings are applied on import
(``tasks.environment``), before Prefect or MLflow can be imported."""

from tasks import environment

environment.apply()
