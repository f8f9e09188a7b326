"""Test configuration: hypothesis profiles.

Locally hypothesis draws fresh examples every run (that is how it finds bugs); in CI
(``CI`` set) the examples are derandomised so that a landing never hinges on a draw.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
