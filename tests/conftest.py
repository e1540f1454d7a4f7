import pytest_twisted

from tests.harness import start_pds, make_settings


@pytest_twisted.async_yield_fixture
async def pds(tmp_path):
    """A running leafpds with embedded defaults on an ephemeral port."""
    running = await start_pds(make_settings(tmp_path / "data"))
    yield running
    await running.service.stopService()
