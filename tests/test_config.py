"""Options: command line > LEAFPDS_* environment > defaults; the master secret file."""

import os
import stat

import pytest
from twisted.python import usage

from leafpds.config import ConfigError, Settings, load_master_secret, resolve
from leafpds.tap import Options


def test_defaults():
    settings = Settings.from_options(resolve({}, {}))
    assert settings.listen == "tcp:2583:interface=127.0.0.1"
    assert settings.hostname == "localhost"
    assert settings.handle_domain == ".test"
    assert settings.master_secret_file == settings.data_dir / "master.key"
    assert settings.public_url_for_port(2583) == "http://localhost:2583"
    assert settings.service_did_for("http://localhost:2583") == "did:web:localhost%3A2583"


def test_service_did_from_the_public_url_or_given():
    settings = Settings.from_options(resolve({"hostname": "pds.example.com"}, {}))
    assert settings.service_did_for("https://pds.example.com") == "did:web:pds.example.com"
    # A port is part of the DID unless it is the scheme's default.
    assert settings.service_did_for("https://pds.example.com:443") == "did:web:pds.example.com"
    assert settings.service_did_for("http://Box.Example:80") == "did:web:box.example"
    assert settings.service_did_for("https://pds.example.com:8443") == "did:web:pds.example.com%3A8443"
    assert settings.service_did_for("http://127.0.0.1:2590/") == "did:web:127.0.0.1%3A2590"
    given = Settings.from_options(resolve({}, {"LEAFPDS_SERVICE_DID": "did:plc:ewvi7nxzyoun6zhxrhs64oiz"}))
    assert given.service_did_for("http://localhost:2583") == "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--service-did", "pds.example.com"])


def test_public_url_for_real_hostname():
    settings = Settings.from_options(resolve({"hostname": "pds.example.com"}, {}))
    assert settings.public_url_for_port(443) == "https://pds.example.com"
    explicit = Settings.from_options(resolve({"public-url": "https://x.example/"}, {}))
    assert explicit.public_url_for_port(1) == "https://x.example"


def test_command_line_beats_environment_beats_default(monkeypatch):
    monkeypatch.setenv("LEAFPDS_HOSTNAME", "env.example")
    monkeypatch.setenv("LEAFPDS_HANDLE_DOMAIN", "example.org")
    options = Options()
    options.parseOptions(["--hostname", "cli.example"])
    assert options.settings.hostname == "cli.example"
    assert options.settings.handle_domain == ".example.org"


def test_list_options_may_be_repeated_or_comma_separated(monkeypatch):
    monkeypatch.setenv("LEAFPDS_CRAWLERS", "https://env.example")
    options = Options()
    options.parseOptions([
        "--crawlers", "https://bsky.network", "--crawlers", "https://relay.example,https://third.example",
        "--app-redirect-uri", "https://app.example/cb",
    ])
    assert options.settings.crawlers == ("https://bsky.network", "https://relay.example", "https://third.example")
    assert options.settings.app_redirect_uris == ("https://app.example/cb",)
    # Not given on the command line: the environment's list.
    options = Options()
    options.parseOptions([])
    assert options.settings.crawlers == ("https://env.example",)
    assert options.settings.app_redirect_uris == ()


def test_keywords_for_an_embedding_application_beat_the_environment():
    environ = {"LEAFPDS_HOSTNAME": "env.example", "LEAFPDS_HANDLE_DOMAIN": "example.org", "LEAFPDS_NO_RATE_LIMITS": "1"}
    settings = Settings.from_keywords(environ, hostname="app.example", max_json_body="5000", invite_required=True)
    assert (settings.hostname, settings.handle_domain, settings.max_json_body) == ("app.example", ".example.org", 5000)
    assert settings.invite_required and not settings.rate_limits
    assert Settings.from_keywords({}).hostname == "localhost"
    with pytest.raises(ConfigError, match="unknown option.*: data_folder"):
        Settings.from_keywords({}, data_folder="./pds")


def test_help_documents_every_option():
    text = str(Options())
    for option in ["--listen", "--hostname", "--data-dir", "--public-url", "--plc-url",
                   "--handle-domain", "--admin-password", "--master-secret-file",
                   "--service-did", "--smtp-url", "--email-from"]:
        assert option in text
    assert "LEAFPDS_DATA_DIR" in text


def test_bad_number_is_a_usage_error():
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--max-json-body", "lots"])
    with pytest.raises(ConfigError):
        Settings.from_options(resolve({"max-json-body": "x"}, {}))


def test_master_secret_created_once_with_0600(tmp_path):
    path = tmp_path / "master.key"
    first = load_master_secret(path, {})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(first) == 64
    assert load_master_secret(path, {}) == first
    assert load_master_secret(path, {"LEAFPDS_MASTER_SECRET": "from-env"}) == b"from-env"
    assert path.read_bytes().strip() == first  # never overwritten


def test_sign_in_provider_options_and_secrets_not_shown():
    settings = Settings.from_options(resolve(
        {"github-client-id": "gh-id", "github-client-secret": "gh-secret",
         "app-redirect-uri": "https://app.example/cb, http://127.0.0.1:9/done"},
        {"LEAFPDS_GOOGLE_CLIENT_SECRET": "go-secret", "LEAFPDS_GOOGLE_ISSUER": "http://127.0.0.1:5/"},
    ))
    assert settings.github_client_id == "gh-id"
    assert settings.github_url == "https://github.com"
    assert settings.github_api_url == "https://api.github.com"
    assert settings.google_issuer == "http://127.0.0.1:5"
    assert settings.google_client_id is None
    assert settings.app_redirect_uris == ("https://app.example/cb", "http://127.0.0.1:9/done")
    shown = repr(settings)
    assert "gh-secret" not in shown and "go-secret" not in shown
    assert "--github-client-id" in str(Options()) and "LEAFPDS_APP_REDIRECT_URI" in str(Options())
