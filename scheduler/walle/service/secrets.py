"""Resolve a job's `secrets:` references to values, at placement time, on the leader.

Sources (docs/security.md, "Secrets"): a Consul KV key under walle/secrets/, or a file under
the scheduler's secrets directory on the control node (default /etc/walle/secrets). Paths
were checked by the parser (relative, no '..'); the file reader also resolves symlinks and
refuses anything that leads out of the directory. Errors name the secret and its source,
never its value; nothing here logs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from walle.adapters.consul import ConsulApi, ConsulError
from walle.adapters.consul.secrets import read_secret, secret_key
from walle.jobspec import JobSpec, Secret

DEFAULT_SECRETS_DIR = "/etc/walle/secrets"
MAX_SECRET_BYTES = 64 * 1024

SecretResolver = Callable[[JobSpec], dict[str, str]]


class SecretError(ValueError):
    """A secret could not be read; the message is safe to record (no value in it)."""


class SecretReader:
    def __init__(self, api: ConsulApi | None, secrets_dir: str = DEFAULT_SECRETS_DIR):
        self.api = api
        self.secrets_dir = secrets_dir

    def __call__(self, spec: JobSpec) -> dict[str, str]:
        """credential name -> value for every secret of the job."""
        return {s.name: _text(s, self._raw(s)) for s in spec.secrets}

    def _raw(self, secret: Secret) -> bytes:
        if secret.source == "consul":
            return self._from_consul(secret)
        return self._from_file(secret)

    def _from_consul(self, secret: Secret) -> bytes:
        where = f"secrets.{secret.name}: Consul key {secret_key(secret.path)}"
        if self.api is None:
            raise SecretError(f"{where}: this scheduler has no Consul connection")
        try:
            value = read_secret(self.api, secret.path)
        except ConsulError as err:
            raise SecretError(f"{where}: cannot be read ({err})") from err
        if value is None:
            raise SecretError(f"{where} does not exist; put it with "
                              f"`consul kv put {secret_key(secret.path)} @FILE`")
        return value

    def _from_file(self, secret: Secret) -> bytes:
        root = os.path.realpath(self.secrets_dir)
        path = os.path.realpath(os.path.join(root, secret.path))
        where = f"secrets.{secret.name}: file {secret.path} in {self.secrets_dir}"
        if os.path.commonpath([root, path]) != root or path == root:
            raise SecretError(f"{where} leads outside the secrets directory")
        if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block the leader
            raise SecretError(f"{where} is not a regular file")
        try:
            with open(path, "rb") as handle:
                return handle.read(MAX_SECRET_BYTES + 1)
        except OSError as err:
            raise SecretError(f"{where} cannot be read: {err.strerror}") from err


def _text(secret: Secret, raw: bytes) -> str:
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretError(f"secrets.{secret.name}: larger than {MAX_SECRET_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SecretError(f"secrets.{secret.name}: not UTF-8 text (store binary secrets "
                          "base64-encoded)") from err
