"""
JavaScript for browser tests, built from the npm packages pinned in
``tests/js/package-lock.json``: ``npm ci`` into a cache outside the
repository, then esbuild bundles an entry module of ``tests/js/`` into ONE
browser ES module that a test page can ``import`` from its own server.

The cache is ``~/.cache/leafpds-tests/js/<hash of package.json and lock>/``
(``LEAFPDS_TEST_CACHE`` moves ``~/.cache/leafpds-tests``): the first run
installs (npm's own cache in ``~/.npm`` makes a reinstall offline), later
runs reuse it; a changed lock file gets a fresh folder.  A file lock lets
test runs in several worktrees share it safely.  Nothing is written into
the repository.

Failing to install or to bundle raises :class:`JSBuildError`: the tests that
need the bundle fail (error), they are never skipped.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

JS_DIR = Path(__file__).resolve().parent / "js"
#: The entry module re-exporting what pages need of @atproto/api.
ATPROTO_API_ENTRY = JS_DIR / "atproto-api.js"
MANIFESTS = ("package.json", "package-lock.json")
# Generous: a cold npm cache downloads a few MB from the registry.
INSTALL_TIMEOUT = 240


class JSBuildError(RuntimeError):
    """npm or esbuild failed; the message carries their output."""


def cache_root() -> Path:
    base = os.environ.get("LEAFPDS_TEST_CACHE") or "~/.cache/leafpds-tests"
    return Path(base).expanduser() / "js"


def digest(*paths: Path) -> str:
    """A short hash of the names and contents of ``paths`` (a cache key)."""
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()[:16]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    try:
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT
        )
    except FileNotFoundError:
        raise JSBuildError(
            f"{command[0]} not found: the browser tests need Node.js and npm (README's test command installs them)"
        ) from None
    except subprocess.TimeoutExpired as e:
        raise JSBuildError(f"{' '.join(command)} took over {INSTALL_TIMEOUT} s:\n{e.stdout}\n{e.stderr}") from None
    if done.returncode != 0:
        raise JSBuildError(
            f"{' '.join(command)} failed (exit {done.returncode}) in {cwd}:\n{done.stdout}\n{done.stderr}"
        )


def install_node_modules(js_dir: Path = JS_DIR) -> Path:
    """
    The folder whose ``node_modules`` holds exactly what the lock file of
    ``js_dir`` (``tests/js/`` unless given) pins; installed by ``npm ci``
    on first use.
    """
    manifests = [js_dir / name for name in MANIFESTS]
    home = cache_root() / digest(*manifests)
    done = home / ".installed"
    with _locked(home.with_suffix(".lock")):
        if done.exists():
            return home
        # A half-finished earlier attempt leaves no marker: start clean.
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        for manifest in manifests:
            shutil.copyfile(manifest, home / manifest.name)
        # No install scripts: esbuild's only checks its binary, which its
        # launcher finds in the platform package the lock file pins anyway.
        _run(["npm", "ci", "--ignore-scripts", "--prefer-offline", "--no-audit", "--no-fund"], cwd=home)
        done.touch()
    return home


def bundle(entry: Path) -> Path:
    """
    ``entry`` (a module in ``tests/js/``) and everything it imports from
    the pinned packages, as one browser ES module in the cache; rebuilt
    only when the entry or the lock file changes.
    """
    home = install_node_modules()
    out = home / "bundles" / f"{entry.stem}-{digest(entry)}.js"
    with _locked(home / "bundles.lock"):
        if out.exists():
            return out
        out.parent.mkdir(exist_ok=True)
        partial = out.with_suffix(".partial.js")
        esbuild = home / "node_modules" / "esbuild" / "bin" / "esbuild"
        _run(
            [
                "node", str(esbuild), str(entry), "--bundle", "--format=esm", "--platform=browser",
                "--target=es2022", "--log-level=warning", f"--outfile={partial}",
            ],
            cwd=JS_DIR,
            # The entry stays where it is; its packages come from the cache.
            env={**os.environ, "NODE_PATH": str(home / "node_modules")},
        )
        os.replace(partial, out)
    return out


@pytest.fixture(scope="session")
def atproto_api_bundle() -> Path:
    """
    The path of one browser ES module exporting ``Agent``, ``AtpAgent``,
    ``CredentialSession`` and ``RichText`` from the pinned ``@atproto/api``
    (``tests/js/atproto-api.js``).  Serve it next to a page and
    ``import { AtpAgent } from './atproto-api.js'``.  Installs on first use;
    fails (never skips) if Node.js or the packages cannot be had.
    """
    return bundle(ATPROTO_API_ENTRY)
