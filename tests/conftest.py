import pytest
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


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """moto's S3 in server mode, on loopback, for the whole session (tests/s3_standin.py)."""
    from tests.s3_standin import MotoServer

    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def s3(moto_server):
    """The moto server with nothing but an empty test bucket and a user allowed to use it."""
    moto_server.fresh()
    return moto_server
