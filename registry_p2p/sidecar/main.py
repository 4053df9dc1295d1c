"""Start a sidecar: the seeder process, then gunicorn serving ``registry_p2p.sidecar.app``."""

import logging
import subprocess
import sys
import time

from registry_p2p import storage, tls
from registry_p2p.config import create_cache_dir
from registry_p2p.errors import P2PError, RegistryP2PError
from registry_p2p.server import GunicornServer, gunicorn_options
from registry_p2p.sidecar.app import create_app
from registry_p2p.sidecar.ipc import SeederClient

log = logging.getLogger(__name__)

SEEDER_START_TIMEOUT = 30.0


def start_seeder(config):
    """Start the seeder process and wait until it responds on its socket."""
    command = [sys.executable, "-m", "registry_p2p.sidecar.seeder", "-c", config.source]
    process = subprocess.Popen(command)
    client = SeederClient(config["cache_dir"])
    deadline = time.monotonic() + SEEDER_START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RegistryP2PError(f"seeder process exited with status {process.returncode} "
                                   f"at start; see its log lines above")
        try:
            client.call("ping")
            # gunicorn forks its workers from this process, which must not
            # hand them this thread's connection.
            client.close()
            return process
        except P2PError:
            if time.monotonic() > deadline:
                process.terminate()
                raise RegistryP2PError(f"seeder process did not respond within "
                                       f"{SEEDER_START_TIMEOUT:.0f} s") from None
            time.sleep(0.2)


def run(config):
    # Every gunicorn worker creates the driver; a bad setting is reported
    # once here instead of by each worker's traceback.
    storage.check_driver_config(config)
    tls.check_server_tls(config)
    create_cache_dir(config["cache_dir"])
    seeder = start_seeder(config)
    scheme = "HTTPS" if config["tls_certificate"] else "plain HTTP"
    log.info("sidecar fronting %s, serving %s on %s:%d", config["registry_url"], scheme,
             *config["listen"])
    # NOTE: a seeder that dies is not restarted; /healthz turns 503 and
    # metainfo requests fail until the sidecar is restarted, while the
    # registry proxy keeps working.
    try:
        options = gunicorn_options(config["listen"], config["workers"], config["threads"],
                                   config["log_level"], certificate=config["tls_certificate"],
                                   key=config["tls_key"])
        GunicornServer(lambda: create_app(config), options).run()
    finally:
        seeder.terminate()
        try:
            seeder.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log.error("seeder process %d did not stop; killing it", seeder.pid)
            seeder.kill()
