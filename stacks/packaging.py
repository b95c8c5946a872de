"""The Lambda asset, built without Docker: locked wheels for the Lambda platform plus the idsync package.

``lambdas/requirements.lock`` holds the whole dependency closure with every distribution's hash
(``uv pip compile --universal --generate-hashes`` from ``lambdas/requirements.txt``). pip installs
exactly it (``--require-hashes``: an unpinned, unlisted or altered file fails the build) as manylinux
wheels for the target architecture and Python version (``--only-binary``, so nothing is compiled on
this machine) into a cache directory keyed by the lock's content and the target; a second synth
copies from the cache instead of downloading again.

boto3 and botocore ship in the bundle, pinned like the rest, rather than taken from the Lambda
runtime: the runtime's copy changes when AWS updates it, so the function would run an SDK (and
service models, which botocore uses to validate every request) that no test ran against.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, ILocalBundling
from aws_cdk import aws_lambda as lambda_

PYTHON_VERSION = "3.14"
RUNTIME = lambda_.Runtime.PYTHON_3_14
PLATFORMS = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}
PACKAGE = "idsync"
LOCK_FILE = "requirements.lock"
# Never shipped from a prebuilt or plain source directory: caches and build metadata.
EXCLUDE = ["**/__pycache__", "**/*.pyc", "*.egg-info", "**/.mypy_cache", "**/.pytest_cache"]

Installer = Callable[[Path, Path, str], None]


def pip_install(requirements: Path, target: Path, platform: str) -> None:
    """Install the locked requirements (hashes checked) as Lambda wheels into ``target``. Raises RuntimeError."""
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--require-hashes", "--no-deps",
        "--requirement", str(requirements), "--target", str(target),
        "--platform", platform, "--only-binary=:all:", "--implementation", "cp",
        "--python-version", PYTHON_VERSION, "--no-compile",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip could not build the Lambda dependencies:\n{result.stderr.strip()}")


def dependency_key(requirements: Path, platform: str) -> str:
    """The cache key of a dependency build: the lock file's content (every pin and hash) and the target."""
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"|{platform}|{PYTHON_VERSION}".encode())
    return digest.hexdigest()[:16]


@jsii.implements(ILocalBundling)
class LocalBundler:
    """Builds the asset on this machine (CDK's local bundling), so synth needs no Docker."""

    def __init__(self, source: Path, cache_root: Path, architecture: str, installer: Installer = pip_install) -> None:
        self._source = source
        self._cache_root = cache_root
        self._platform = PLATFORMS[architecture]
        self._installer = installer

    def dependencies(self) -> Path:
        """The cached dependency directory for this source's lock file, built if missing."""
        requirements = self._source / LOCK_FILE
        cached = self._cache_root / dependency_key(requirements, self._platform)
        if not cached.is_dir():
            partial = cached.with_name(cached.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            self._installer(requirements, partial, self._platform)
            partial.rename(cached)  # only a complete build ever becomes the cache entry
        return cached

    # jsii hands the bundling options over positionally; the keyword form is the declared interface.
    def try_bundle(self, output_dir: str, *_options: Any, **_keywords: Any) -> bool:
        """Copy the dependencies and the idsync package into ``output_dir``. Raises RuntimeError."""
        output = Path(output_dir)
        shutil.copytree(self.dependencies(), output, dirs_exist_ok=True)
        shutil.copytree(
            self._source / PACKAGE,
            output / PACKAGE,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        return True


def bundled_code(source: Path, cache_root: Path, architecture: str) -> lambda_.Code:
    """The Lambda code asset: ``source``/idsync plus the dependencies ``source``/requirements.lock holds,
    bundled locally."""
    return lambda_.Code.from_asset(
        str(source),
        # Hash what is shipped, so a new architecture or Python version is a new asset too.
        asset_hash_type=AssetHashType.OUTPUT,
        bundling=BundlingOptions(
            # Required by the API; local bundling always answers, so this image is never pulled.
            image=RUNTIME.bundling_image,
            local=LocalBundler(source, cache_root, architecture),
        ),
    )


def prebuilt_code(path: Path) -> lambda_.Code:
    """A Lambda code asset from a directory that already holds what to ship (or plain sources in tests)."""
    return lambda_.Code.from_asset(str(path), exclude=EXCLUDE)
