"""tests/security: every attack a hostile agent, a local user or a network peer can try (SECURITY.md names them)."""

import pytest

pytest.register_assert_rewrite("security_kit")
