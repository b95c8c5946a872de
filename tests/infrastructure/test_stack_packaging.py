"""The Lambda asset built without Docker: cached dependencies plus the idsync package."""

from __future__ import annotations

import re
from importlib.metadata import requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from stack_helpers import ROOT

from stacks.packaging import LocalBundler, dependency_key, pip_install


class FakePip:
    """Stands in for pip: records each install and writes one module, or fails when told to."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[Path, str]] = []
        self.fail = fail

    def __call__(self, requirements: Path, target: Path, platform: str) -> None:
        self.calls.append((requirements, platform))
        target.mkdir(parents=True)
        (target / "dependency.py").write_text("VERSION = 1\n")
        if self.fail:
            raise RuntimeError("pip could not build the Lambda dependencies:\nno network")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    lambdas = tmp_path / "lambdas"
    (lambdas / "idsync" / "handlers").mkdir(parents=True)
    (lambdas / "idsync" / "__init__.py").write_text("")
    (lambdas / "idsync" / "handlers" / "sync.py").write_text("def lambda_handler(event, context): ...\n")
    (lambdas / "idsync" / "__pycache__").mkdir()
    (lambdas / "idsync" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (lambdas / "idsync.egg-info").mkdir()
    (lambdas / "requirements.lock").write_text("boto3==1.44.5 --hash=sha256:" + "0" * 64 + "\n")
    return lambdas


def shipped(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file()}


def test_bundle_holds_the_dependencies_and_the_package_without_caches(source: Path, tmp_path: Path) -> None:
    pip = FakePip()
    bundler = LocalBundler(source, tmp_path / "cache", "arm64", installer=pip)
    output = tmp_path / "out"
    output.mkdir()
    assert bundler.try_bundle(str(output), None) is True  # jsii passes the options positionally
    assert shipped(output) == {"dependency.py", "idsync/__init__.py", "idsync/handlers/sync.py"}
    assert pip.calls == [(source / "requirements.lock", "manylinux2014_aarch64")]


def test_dependencies_are_fetched_once_per_requirements_and_target(source: Path, tmp_path: Path) -> None:
    pip = FakePip()
    cache = tmp_path / "cache"
    # Given two synths of the same sources
    for run in range(2):
        output = tmp_path / f"out{run}"
        output.mkdir()
        LocalBundler(source, cache, "arm64", installer=pip).try_bundle(str(output))
    # Then pip ran once; a new pin or another architecture is a new build
    assert len(pip.calls) == 1
    # a new pin or hash anywhere in the closure (not only a top-level one) is a new build
    (source / "requirements.lock").write_text("boto3==1.44.5 --hash=sha256:" + "1" * 64 + "\n")
    LocalBundler(source, cache, "arm64", installer=pip).dependencies()
    LocalBundler(source, cache, "x86_64", installer=pip).dependencies()
    assert [platform for _, platform in pip.calls] == [
        "manylinux2014_aarch64",
        "manylinux2014_aarch64",
        "manylinux2014_x86_64",
    ]
    assert len(list(cache.iterdir())) == 3


def test_a_failed_install_leaves_no_cache_entry(source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="no network"):
        LocalBundler(source, cache, "arm64", installer=FakePip(fail=True)).dependencies()
    # The next synth tries again instead of shipping half a build
    pip = FakePip()
    built = LocalBundler(source, cache, "arm64", installer=pip).dependencies()
    assert len(pip.calls) == 1
    assert shipped(built) == {"dependency.py"}
    assert [p.name for p in cache.iterdir()] == [built.name]


def test_cache_key_follows_the_pins_and_the_target(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("msal==1.39.0\n")
    arm = dependency_key(requirements, "manylinux2014_aarch64")
    assert arm == dependency_key(requirements, "manylinux2014_aarch64")
    assert arm != dependency_key(requirements, "manylinux2014_x86_64")
    requirements.write_text("msal==1.40.0\n")
    assert arm != dependency_key(requirements, "manylinux2014_aarch64")


def test_pip_failure_is_reported_with_pips_own_message(tmp_path: Path) -> None:
    # A requirement pip cannot parse fails before any download
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("this is not a requirement ===\n")
    with pytest.raises(RuntimeError, match="pip could not build the Lambda dependencies") as caught:
        pip_install(requirements, tmp_path / "target", "manylinux2014_aarch64")
    assert "requirement" in str(caught.value).lower()


def test_runtime_requirements_are_all_pinned() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "lambdas" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines
    assert all("==" in line for line in lines), lines


def locked() -> dict[str, tuple[str, list[str], str]]:
    """name -> (version, hashes, marker) from lambdas/requirements.lock."""
    text = (ROOT / "lambdas" / "requirements.lock").read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement, *options = line.split(" --hash=")
        parsed = Requirement(requirement.strip())
        (specifier,) = parsed.specifier
        assert specifier.operator == "==", line
        hashes = [option.split()[0] for option in options]
        pins[canonicalize_name(parsed.name)] = (specifier.version, hashes, str(parsed.marker or ""))
    return pins


def test_the_lock_holds_every_dependency_of_the_lambda_runtime_pinned_with_hashes() -> None:
    pins = locked()
    assert all(
        hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes) for _, hashes, _ in pins.values()
    )
    # the top-level pins are the lock's
    for line in (ROOT / "lambdas" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            top = Requirement(line)
            assert pins[canonicalize_name(top.name)][0] == next(iter(top.specifier)).version, line
    # and every dependency of a locked package (as Lambda's Python 3.14 on Linux evaluates markers, with the
    # extras requirements.txt asks for) is locked too
    target = {"python_version": "3.14", "python_full_version": "3.14.0", "sys_platform": "linux"}
    extras = {"aws-lambda-powertools": ("tracer", "parser")}
    for name, (pinned, _, _) in pins.items():
        assert version(name) == pinned, f"the test environment has {name} {version(name)}, the lock {pinned}"
        for dependency in requires(name) or []:
            parsed = Requirement(dependency)
            wanted = ("", *extras.get(name, ()))
            if parsed.marker is None or any(parsed.marker.evaluate({**target, "extra": e}) for e in wanted):
                assert canonicalize_name(parsed.name) in pins, f"{name} needs {parsed.name}, which the lock lacks"


def test_an_unhashed_requirement_fails_the_build_before_any_download(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("msal==1.39.0\n")
    with pytest.raises(RuntimeError, match=r"[Hh]ashes are required"):
        pip_install(lock, tmp_path / "target", "manylinux2014_aarch64")
