"""A Keystone identity service (v3 API) on loopback, for a Swift that authenticates with Keystone."""

import grp
import logging
import os
import pwd
import secrets
import sqlite3
import subprocess
import time
from pathlib import Path

import requests

from registry_p2p.sandbox import SandboxError
from registry_p2p.sandbox.process import ManagedProcess, clean_environment, free_port, require_binary

log = logging.getLogger(__name__)

# Roles that `keystone-manage bootstrap` creates in Keystone 22 besides the admin role.
MEMBER_ROLE = "member"


class Keystone:
    """Keystone with a sqlite database and fernet tokens, started by start() or `with`.

    Everything lives in `workdir`: keystone.conf, keystone.db, the fernet
    and credential keys, and keystone.log. `keystone-manage bootstrap`
    creates the user `admin_user` with the admin role on the project
    `admin_project`, both in the domain Default, and the identity endpoint
    `auth_url` in region `region`. Keystone's WSGI application runs under
    gunicorn on a free port.
    """

    def __init__(self, workdir: Path, host: str = "127.0.0.1", region: str = "RegionOne",
                 start_timeout: float = 60.0):
        self.workdir = Path(workdir)
        self.host = host
        self.region = region
        self.start_timeout = start_timeout
        self.admin_user = "admin"
        self.admin_project = "admin"
        self.admin_password = secrets.token_hex(12)
        self.port = 0
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """Base URL of Keystone, "http://host:port"."""
        return f"http://{self.host}:{self.port}"

    @property
    def auth_url(self) -> str:
        """Identity v3 URL, as clients and docker-registry's authurl take it."""
        return f"{self.url}/v3"

    @property
    def config_path(self) -> Path:
        return self.workdir / "keystone.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "keystone.log"

    def start(self) -> "Keystone":
        """Create the database and keys, bootstrap the admin, start gunicorn and return self."""
        keystone_manage = require_binary("keystone-manage", "keystone")
        gunicorn = require_binary("gunicorn", "gunicorn")
        if self._process is not None:
            raise SandboxError(f"Keystone in {self.workdir} was already started")

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        self._write_configuration()
        started = time.monotonic()

        self._manage(keystone_manage, ["db_sync"])
        _use_write_ahead_log(self.workdir / "keystone.db")
        owner = ["--keystone-user", pwd.getpwuid(os.geteuid()).pw_name,
                 "--keystone-group", grp.getgrgid(os.getegid()).gr_name]
        self._manage(keystone_manage, ["fernet_setup", *owner])
        self._manage(keystone_manage, ["credential_setup", *owner])
        self._manage(keystone_manage, [
            "bootstrap",
            "--bootstrap-username", self.admin_user,
            "--bootstrap-project-name", self.admin_project,
            "--bootstrap-role-name", "admin",
            "--bootstrap-service-name", "keystone",
            "--bootstrap-region-id", self.region,
            "--bootstrap-public-url", self.auth_url,
            "--bootstrap-internal-url", self.auth_url,
        ], {"OS_BOOTSTRAP_PASSWORD": self.admin_password})

        env = {**clean_environment(), "OS_KEYSTONE_CONFIG_DIR": str(self.workdir),
               "OS_KEYSTONE_CONFIG_FILES": self.config_path.name}
        wsgi_dir = Path(__file__).resolve().parent / "wsgi_apps"
        # One single-threaded worker serves requests one at a time. With
        # threads, Keystone shares a sqlite connection between them, which
        # sqlite3 rejects, and with two worker processes sqlite returns
        # "database is locked" to one of them.
        self._process = ManagedProcess("keystone", [
            gunicorn, "--chdir", str(wsgi_dir), "--bind", f"{self.host}:{self.port}",
            "--workers", "1", "--worker-class", "sync", "keystone_public:application",
        ], self.log_path, env=env)
        try:
            self._process.start()
            self._process.wait_http(f"{self.auth_url}/", self.start_timeout, expect_status=200)
        except BaseException:
            self.stop()
            raise

        log.info("Keystone ready at %s in %.1f s, work directory %s",
                 self.url, time.monotonic() - started, self.workdir)
        return self

    def stop(self) -> None:
        """Stop gunicorn. The database, keys and log stay in workdir."""
        if self._process is not None:
            self._process.stop()
            self._process = None

    def __enter__(self) -> "Keystone":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def authenticate(self, user: str, password: str, project: str) -> tuple[str, dict]:
        """Return a project-scoped token of `user` in domain Default and the token's body."""
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}},
        }}
        response = self._request("POST", "/auth/tokens", json=body, token=None)
        if response.status_code != 201:
            raise SandboxError(f"Keystone at {self.url} returned HTTP {response.status_code} "
                               f"for a token of user {user!r} on project {project!r}: "
                               f"{response.text[:300]}")

        return response.headers["X-Subject-Token"], response.json()["token"]

    def admin_token(self) -> str:
        return self.authenticate(self.admin_user, self.admin_password, self.admin_project)[0]

    def create_user(self, user: str, password: str, project: str) -> str:
        """Create `project` and `user` in domain Default with the member role on the project; return the project id."""
        token = self.admin_token()
        project_id = self._create("projects", {"project": {"name": project, "domain_id": "default"}},
                                  token)["project"]["id"]
        user_id = self._create("users", {"user": {
            "name": user, "password": password, "domain_id": "default",
            "default_project_id": project_id}}, token)["user"]["id"]
        role_id = self._role_id(MEMBER_ROLE, token)
        response = self._request("PUT", f"/projects/{project_id}/users/{user_id}/roles/{role_id}",
                                 token=token)
        self._check(response, f"assign role {MEMBER_ROLE} to user {user!r}")

        return project_id

    def add_object_store(self, url_template: str) -> None:
        """Register an object-store service whose public and internal endpoint is `url_template`.

        Keystone replaces $(project_id)s in the URL with the token's project id.
        """
        token = self.admin_token()
        service_id = self._create("services", {"service": {"type": "object-store", "name": "swift"}},
                                  token)["service"]["id"]
        for interface in ("public", "internal"):
            self._create("endpoints", {"endpoint": {
                "service_id": service_id, "interface": interface, "url": url_template,
                "region_id": self.region}}, token)

    def revoke_token(self, token: str) -> None:
        """Revoke `token` (DELETE /v3/auth/tokens) with an admin token."""
        response = self._request("DELETE", "/auth/tokens", token=self.admin_token(),
                                 headers={"X-Subject-Token": token})
        self._check(response, "revoke a token")

    def _manage(self, keystone_manage: str, arguments: list[str], extra_env: dict | None = None) -> None:
        argv = [keystone_manage, "--config-file", str(self.config_path), *arguments]
        env = {**clean_environment(), **(extra_env or {})}
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise SandboxError(f"keystone-manage {arguments[0]} failed with status "
                               f"{result.returncode}: {(result.stdout + result.stderr).strip()[-2000:]}")

    def _write_configuration(self) -> None:
        keys = self.workdir / "fernet-keys"
        sections = {
            "DEFAULT": {"use_stderr": "true"},
            "database": {"connection": f"sqlite:///{self.workdir / 'keystone.db'}"},
            "token": {"provider": "fernet"},
            "fernet_tokens": {"key_repository": str(keys)},
            "fernet_receipts": {"key_repository": str(keys)},
            "credential": {"key_repository": str(self.workdir / "credential-keys")},
        }
        lines = []
        for section, options in sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {value}" for key, value in options.items())
            lines.append("")
        self.config_path.write_text("\n".join(lines))

    def _create(self, collection: str, body: dict, token: str) -> dict:
        response = self._request("POST", f"/{collection}", json=body, token=token)
        self._check(response, f"create {collection}")
        return response.json()

    def _role_id(self, name: str, token: str) -> str:
        response = self._request("GET", f"/roles?name={name}", token=token)
        self._check(response, f"look up role {name}")
        roles = response.json()["roles"]
        if not roles:
            raise SandboxError(f"Keystone at {self.url} has no role {name!r}; see {self.log_path}")

        return roles[0]["id"]

    def _request(self, method: str, path: str, token: str | None, json: dict | None = None,
                 headers: dict | None = None) -> requests.Response:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["X-Auth-Token"] = token
        with requests.Session() as http:
            http.trust_env = False
            try:
                return http.request(method, f"{self.auth_url}{path}", json=json,
                                    headers=all_headers, timeout=30.0)
            except requests.RequestException as error:
                raise SandboxError(f"Keystone request {method} {path} to {self.url} failed: "
                                   f"{error}") from error

    def _check(self, response: requests.Response, action: str) -> None:
        if response.status_code >= 300:
            raise SandboxError(f"Keystone at {self.url} failed to {action}: HTTP "
                               f"{response.status_code} {response.text[:300]}; see {self.log_path}")


def _use_write_ahead_log(database: Path) -> None:
    """Switch the sqlite database to write-ahead logging, which the file keeps.

    Keystone can write in one sqlite connection while another connection of
    the same request still has a read transaction open. In sqlite's default
    rollback-journal mode that reader blocks the commit ("database is
    locked"); with a write-ahead log readers do not block a writer.
    """
    connection = sqlite3.connect(database)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()
