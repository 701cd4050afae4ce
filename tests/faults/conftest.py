"""tests/faults: the fault-injection suite (issue 7). Its helper modules hold assertions: have pytest rewrite them."""

import pytest

pytest.register_assert_rewrite("faultkit", "sweep_fleet")
