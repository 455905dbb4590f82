#!/usr/bin/python
# Copyright: Walle authors
# Simplified BSD License (see https://opensource.org/licenses/BSD-2-Clause)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: walle_consul_service
short_description: Register or deregister one Walle instance with the node's Consul agent
version_added: "0.1.0"
description:
  - Registers (O(state=present)) or deregisters (O(state=absent)) one service instance with the
    Consul agent of the node it runs on, over plain HTTP (no Consul client library on nodes),
    with at most one health check (HTTP, TCP or TTL) and C(DeregisterCriticalServiceAfter).
  - Idempotent. The current registration is read with C(GET /v1/agent/service/<id>), server
    bookkeeping fields (C(ContentHash), C(Datacenter), C(Weights), ...) are dropped, and the
    rest is compared with the desired service. Consul does not return check definitions there,
    so the module stores a digest of the check it registered in the service meta key
    C(walle_check) and also verifies that the check C(service:<id>) still exists.
  - Registration uses C(?replace-existing-checks=true), so a changed check replaces the old one.
  - There are no script checks, because Consul would run them from its agent, outside the
    instance's sandbox. Job specs refuse them at validation.
  - The options are turned into the registration body by C(module_utils/walle_consul.py), the
    code the scheduler's Consul adapter registers with too, so both register the same check.
options:
  consul_addr:
    description:
      - The local agent's HTTP address, V(http://127.0.0.1:8500) or V(https://host:8501); an
        V(https://) address makes the module use TLS with the options below.
    type: str
    default: http://127.0.0.1:8500
  token:
    description:
      - ACL token sent as C(X-Consul-Token). Never logged (C(no_log)). Prefer O(token_file),
        because a token passed here travels through the controller's variables.
      - Unset (and no O(token_file)) sends no token header (the agent's default token applies).
    type: str
  token_file:
    description:
      - File on the node holding the ACL token (the C(consul) role writes one, mode 0600, owner
        root). Read on the node, so the token never passes through the controller, its
        variables or ansible-runner's artifacts. Mutually exclusive with O(token).
    type: path
  validate_certs:
    description: Verify the agent's TLS certificate (HTTPS only).
    type: bool
    default: true
  ca_path:
    description: CA bundle on the node used to verify the agent's certificate (HTTPS only).
    type: path
    aliases: [ca_file]
  client_cert:
    description: Client certificate (PEM) on the node, for agents that verify clients.
    type: path
  client_key:
    description: Private key of O(client_cert) on the node.
    type: path
  timeout:
    description: Seconds to wait for each HTTP request.
    type: int
    default: 10
  state:
    description: V(present) registers or updates, V(absent) deregisters (a no-op when absent).
    type: str
    choices: [present, absent]
    default: present
  service_id:
    description: Service ID, unique per agent. Walle uses V(<job>-<slot>). Default O(name).
    type: str
  name:
    description: Service name (the DNS name V(<name>.service.consul)). Required when present.
    type: str
  address:
    description: Service address. Empty means the agent's own address.
    type: str
    default: ""
  port:
    description: Service port, 1..65535 (carried by DNS SRV answers).
    type: int
  tags:
    description: Service tags (V(<tag>.<name>.service.consul) in DNS).
    type: list
    elements: str
    default: []
  meta:
    description:
      - Service meta, string to string. At most 64 pairs; keys of at most 128 characters from
        letters, digits, V(_) and V(-), not starting with V(consul-); values at most 512
        characters. The key V(walle_check) is reserved by this module.
    type: dict
    default: {}
  check_type:
    description: The health check. V(none) registers the service without a check.
    type: str
    choices: [http, tcp, ttl, none]
    default: none
  check_http:
    description: URL polled by an HTTP check (2xx passing, 429 warning, else critical).
    type: str
  check_tcp:
    description: V(host:port) a TCP check connects to.
    type: str
  check_interval:
    description:
      - How often HTTP/TCP checks run. Durations here are those of job specs (units V(ms),
        V(s), V(m), V(h), V(d), combined as in V(1m30s)) or plain seconds.
    type: str
    default: 10s
  check_timeout:
    description: Timeout of HTTP/TCP checks (Consul's default is 10s).
    type: str
  check_ttl:
    description: TTL of a TTL check; the node must report within it or the check turns critical.
    type: str
  deregister_critical_after:
    description:
      - C(DeregisterCriticalServiceAfter); the service is removed after its check has been
        critical this long. Consul's minimum is V(1m). Ignored when O(check_type=none).
    type: str
    default: 1m
  initial_probe_wait:
    description:
      - Before it registers a new or changed HTTP/TCP check, the module runs the check itself
        from the node (every 0.1 s, for up to this many seconds). A check that passes is
        registered with C(Status) V(passing), so it does not wait for the agent's first run,
        which Consul staggers randomly within the interval; one that does not pass within
        the wait is registered critical as usual, and the agent decides from then on.
      - V(0) probes nothing. Ignored for TTL checks and in check mode.
    type: float
    default: 0
attributes:
  check_mode:
    support: full
    description: Only reads from the agent.
  diff_mode:
    support: full
    description: The compared service (and check) before and after.
  platform:
    support: full
    platforms: posix
    description: Runs on the node (Linux with systemd), not on the controller.
notes:
  - Talks only to the agent at O(consul_addr); run it on the node the instance runs on.
seealso:
  - module: walle.pool.walle_workload
  - name: Consul agent service API
    description: PUT /v1/agent/service/register and friends.
    link: https://developer.hashicorp.com/consul/api-docs/agent/service
author:
  - Walle authors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Register web instance 0 with an HTTP check
  walle_consul_service:
    service_id: web-0
    name: web
    address: 10.77.0.11
    port: 8080
    tags: [v1]
    meta: {walle_job: web, walle_slot: "0"}
    check_type: http
    check_http: http://10.77.0.11:8080/health
    check_interval: 2s
    check_timeout: 1s
    deregister_critical_after: 1m

- name: A batch worker reporting through a TTL check
  walle_consul_service:
    service_id: etl-0
    name: etl
    check_type: ttl
    check_ttl: 30s

- name: Deregister it
  walle_consul_service:
    service_id: web-0
    state: absent

- name: With ACLs and TLS; the token is read on the node from the file the consul role wrote
  walle_consul_service:
    service_id: web-0
    name: web
    port: 8080
    consul_addr: https://127.0.0.1:8501
    token_file: /etc/walle/consul-token
    ca_path: /etc/walle/consul-ca.pem
"""

RETURN = r"""
service_id:
  description: The service ID acted on.
  returned: always
  type: str
  sample: web-0
operation:
  description: What was (or, in check mode, would be) done.
  returned: always
  type: str
  sample: create
  choices: [create, update, remove, none]
service:
  description: The compared view of the registration after the run (empty when absent).
  returned: always
  type: dict
  sample: {"ID": "web-0", "Service": "web", "Tags": ["v1"], "Port": 8080,
           "Address": "10.77.0.11", "Meta": {"walle_check": "3f9c2a1b0d4e"}}
check:
  description: The check definition sent (empty when none).
  returned: always
  type: dict
  sample: {"CheckID": "service:web-0", "HTTP": "http://10.77.0.11:8080/health",
           "Interval": "2s", "Timeout": "1s", "DeregisterCriticalServiceAfter": "60s"}
check_status:
  description: The status the check was registered with (see O(initial_probe_wait)).
  returned: when the service was registered with a check (not in check mode)
  type: str
  sample: passing
"""

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
from urllib.error import HTTPError, URLError  # noqa: E402
from urllib.parse import quote  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.urls import open_url  # noqa: E402
from ansible_collections.walle.pool.plugins.module_utils.walle_consul import (  # noqa: E402
    ConsulModuleError,
    comparable,
    desired_service,
    initial_status,
)

ARGUMENT_SPEC = dict(
    consul_addr=dict(type="str", default="http://127.0.0.1:8500"),
    token=dict(type="str", no_log=True),
    token_file=dict(type="path"),
    validate_certs=dict(type="bool", default=True),
    ca_path=dict(type="path", aliases=["ca_file"]),
    client_cert=dict(type="path"),
    client_key=dict(type="path"),
    timeout=dict(type="int", default=10),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    service_id=dict(type="str"),
    name=dict(type="str"),
    address=dict(type="str", default=""),
    port=dict(type="int"),
    tags=dict(type="list", elements="str", default=[]),
    meta=dict(type="dict", default={}),
    check_type=dict(type="str", choices=["http", "tcp", "ttl", "none"], default="none"),
    check_http=dict(type="str"),
    check_tcp=dict(type="str"),
    check_interval=dict(type="str", default="10s"),
    check_timeout=dict(type="str"),
    check_ttl=dict(type="str"),
    deregister_critical_after=dict(type="str", default="1m"),
    initial_probe_wait=dict(type="float", default=0.0),
)
REQUIRED_ONE_OF = [("service_id", "name")]
MUTUALLY_EXCLUSIVE = [("token", "token_file")]
REQUIRED_TOGETHER = [("client_cert", "client_key")]
REQUIRED_IF = [
    ("state", "present", ("name",)),
    ("check_type", "http", ("check_http",)),
    ("check_type", "tcp", ("check_tcp",)),
    ("check_type", "ttl", ("check_ttl",)),
]

# ----------------------------------------------------------------------------- the agent


class Agent:
    """The few agent endpoints the module needs; `request(method, url, data)` does HTTP and
    returns (status, text), raising ConsulModuleError when the agent cannot be reached."""

    def __init__(self, request, base):
        self.request = request
        self.base = base.rstrip("/")

    def _call(self, method, path, data=None, ok=(200,)):
        status, text = self.request(method, self.base + path, data)
        if status not in ok:
            raise ConsulModuleError(f"{method} {path} at {self.base} answered {status}: "
                                    f"{text.strip()[:300]}", status=status)
        return status, text

    def service(self, service_id):
        status, text = self._call("GET", f"/v1/agent/service/{_quote(service_id)}",
                                  ok=(200, 404))
        return json.loads(text) if status == 200 and text else None

    def has_check(self, check_id):
        _status, text = self._call("GET", "/v1/agent/checks")
        return check_id in (json.loads(text or "{}") or {})

    def register(self, body):
        self._call("PUT", "/v1/agent/service/register?replace-existing-checks=true",
                   json.dumps(body))

    def deregister(self, service_id):
        self._call("PUT", f"/v1/agent/service/deregister/{_quote(service_id)}")


def _quote(text):
    return quote(text, safe="")


def run_module(params, agent, check_mode, first_status=initial_status):
    service_id = params["service_id"] or params["name"]
    current = comparable(agent.service(service_id))
    result = {"changed": False, "service_id": service_id, "operation": "none",
              "service": current, "check": {}}
    if params["state"] == "absent":
        if current:
            result.update(changed=True, operation="remove", service={},
                          diff={"before": current, "after": {}})
            if not check_mode:
                agent.deregister(service_id)
        return result

    view, body, check = desired_service(params)
    result["check"] = check
    stale = current != view or (check and not agent.has_check(check["CheckID"]))
    if stale:
        result.update(changed=True, operation="update" if current else "create", service=view,
                      diff={"before": current, "after": view})
        if not check_mode:
            if check:
                status = first_status(check, params.get("initial_probe_wait") or 0.0)
                if status:
                    body["Check"]["Status"] = status
                result["check_status"] = status or "critical"
            agent.register(body)
    return result


def check_consul_addr(addr):
    if not re.match(r"^https?://[^\s/]+/?$", addr or ""):
        raise ConsulModuleError(
            f"consul_addr: {addr!r} is not an agent address; use http://host:port or "
            f"https://host:port", option="consul_addr")


def read_token_file(path):
    """The token in `path` (surrounding whitespace dropped), read on the node."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as err:
        raise ConsulModuleError(
            f"token_file: cannot read {path}: {err.strerror}; install it with the consul "
            f"role (consul_walle_token) or drop token_file", option="token_file") from err
    if not token:
        raise ConsulModuleError(f"token_file: {path} is empty; put the ACL token in it",
                                option="token_file")
    return token


def acl_token(module):
    """The token to send: token, or token_file's content, or None (no header). A token read
    from a file is added to the module's no_log values, so it is masked like `token`."""
    if module.params["token_file"]:
        token = read_token_file(module.params["token_file"])
        module.no_log_values.add(token)
        mode = os.stat(module.params["token_file"]).st_mode & 0o777
        if mode & 0o077:  # a workload (another user) could read the token
            module.warn(f"token_file: {module.params['token_file']} has mode {mode:04o}; "
                        f"chmod 0600 it so only root can read the token")
        return token
    return module.params["token"] or None


def http_request(module, token):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Consul-Token"] = token

    def request(method, url, data):
        try:
            resp = open_url(url, method=method, data=data, headers=headers,
                            validate_certs=module.params["validate_certs"],
                            ca_path=module.params["ca_path"],
                            client_cert=module.params["client_cert"],
                            client_key=module.params["client_key"],
                            timeout=module.params["timeout"])
            return resp.getcode(), resp.read().decode("utf-8", "replace")
        except HTTPError as err:
            body = err.read().decode("utf-8", "replace") if err.fp else ""
            return err.code, body
        except (URLError, OSError) as err:
            raise ConsulModuleError(
                f"cannot reach the Consul agent at {module.params['consul_addr']}: {err}; "
                f"check consul_addr and that the agent runs", option="consul_addr") from err

    return request


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_one_of=REQUIRED_ONE_OF,
                           required_if=REQUIRED_IF, mutually_exclusive=MUTUALLY_EXCLUSIVE,
                           required_together=REQUIRED_TOGETHER, supports_check_mode=True)
    try:
        check_consul_addr(module.params["consul_addr"])
        agent = Agent(http_request(module, acl_token(module)), module.params["consul_addr"])
        result = run_module(module.params, agent, module.check_mode)
    except ConsulModuleError as exc:
        extra = dict(exc.details)
        if exc.option:
            extra["option"] = exc.option
        module.fail_json(msg=exc.msg, **extra)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
