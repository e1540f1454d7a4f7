import pytest_twisted

from tests.appview_standin import StandInAppView
from tests.harness import start_pds, make_settings
from tests.jsbundle import atproto_api_bundle  # noqa: F401 (a session fixture for browser pages)


@pytest_twisted.async_yield_fixture
async def pds(tmp_path):
    """A running leafpds with embedded defaults on an ephemeral port."""
    running = await start_pds(make_settings(tmp_path / "data"))
    yield running
    await running.service.stopService()


@pytest_twisted.async_yield_fixture
async def appview(pds):
    """A stand-in AppView (tests/appview_standin.py) that checks tokens against pds's PLC directory."""
    standin = await StandInAppView.start(pds.service.app.plc.base_url)
    yield standin
    await standin.stop()
