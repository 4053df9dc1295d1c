"""The machine and software that a benchmark ran on, as stored with its record."""

import importlib.metadata
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

PROC = Path("/proc")


def describe_machine(proc=PROC):
    """Return the CPU model, CPU count, memory, kernel and Debian version of this machine.

    Values that cannot be read are None, and the reason is logged.
    """
    cpuinfo = _read_text(proc / "cpuinfo")
    meminfo = _read_text(proc / "meminfo")

    return {
        "cpu_model": _cpuinfo_field(cpuinfo, "model name"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "virtual_machine": _is_virtual_machine(cpuinfo),
        "memory_bytes": _meminfo_bytes(meminfo, "MemTotal"),
        "kernel": platform.release(),
        "debian_version": _read_text(Path("/etc/debian_version")),
    }


def software_versions(python_distributions=(), debian_packages=()):
    """Return the versions of Python, the given Python distributions and Debian packages.

    A distribution or package that is not installed gets None.
    """
    versions = {"python": platform.python_version(), "python_executable": sys.executable}

    for name in python_distributions:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            log.info("python distribution %s is not installed", name)
            versions[name] = None

    for name in debian_packages:
        versions[f"deb:{name}"] = debian_package_version(name)

    return versions


def debian_package_version(name):
    """Return the installed version of Debian package ``name``, or None."""
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name],
                                capture_output=True, text=True, check=False)
    except OSError as error:
        log.info("cannot run dpkg-query for package %s: %s", name, error)
        return None

    if result.returncode != 0 or not result.stdout:
        log.info("debian package %s is not installed: %s", name, result.stderr.strip())
        return None

    return result.stdout


def source_revision():
    """Return the git commit of the checkout this package runs from, with "+dirty" for local changes, or None."""
    checkout = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain",
                                 "--untracked-files=no"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        log.info("no git revision for %s: %s", checkout, error)
        return None

    return commit + ("+dirty" if status.strip() else "")


def _read_text(path):
    try:
        return path.read_text().strip()
    except OSError as error:
        log.info("cannot read %s: %s", path, error)
        return None


def _cpuinfo_field(cpuinfo, field):
    for line in (cpuinfo or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == field:
            return value.strip()

    return None


def _is_virtual_machine(cpuinfo):
    # x86 kernels list the "hypervisor" CPU flag inside a virtual machine.
    flags = _cpuinfo_field(cpuinfo, "flags")
    if flags is None:
        return None

    return "hypervisor" in flags.split()


def _meminfo_bytes(meminfo, field):
    for line in (meminfo or "").splitlines():
        key, _, value = line.partition(":")
        if key == field:
            # The kernel writes "MemTotal:       24684000 kB", where kB means KiB.
            amount, *unit = value.split()
            return int(amount) * (1024 if unit == ["kB"] else 1)

    return None
