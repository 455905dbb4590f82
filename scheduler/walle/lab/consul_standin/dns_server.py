"""Consul-style DNS (docs/services/discovery/dns-static-lookups): UDP and TCP, domain consul.

Answers `[tag.]<service>.service[.<dc>].consul`, `_<service>._<tag|tcp>.service[.<dc>].consul`
(A and SRV), `<node>.node[.<dc>].consul` (A, and TXT `key=value` from node meta) and
`<hex>.addr[.<dc>].consul`. Instances with a critical check (node checks and maintenance
included) are left out; TTL 0; unknown names get NXDOMAIN with the SOA in authority; a UDP
query without EDNS (512 bytes) gets at most 3 records (udp_answer_limit), one with EDNS every
record that fits its buffer (Consul's trimUDPResponse), the TC flag set when records were cut.
"""

from __future__ import annotations

import ipaddress
import logging
import socketserver
import struct
import threading
import time

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT

from .core import RNG
from .store import Store

log = logging.getLogger("walle.consul_standin.dns")
UDP_ANSWER_LIMIT = 3
PLAIN_UDP_SIZE = 512  # a UDP query without EDNS
MAX_UDP_SIZE = 65535 - 60  # Consul's maxUDPDatagramSize: a larger EDNS buffer counts as this


def udp_size(query: dns.message.Message) -> int:
    """The answer size a UDP query accepts: 512, or its EDNS buffer (capped like Consul's)."""
    if query.edns < 0:
        return PLAIN_UDP_SIZE
    return min(max(query.payload, PLAIN_UDP_SIZE), MAX_UDP_SIZE)


class DnsResolver:
    """Pure-ish: turns a query message into a response from the store's current state."""

    def __init__(self, store: Store, domain: str = "consul"):
        self.store = store
        self.domain = dns.name.from_text(domain)

    def respond(self, query: dns.message.Message, udp: bool) -> dns.message.Message:
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        resp.flags &= ~dns.flags.RA
        if not query.question:
            resp.set_rcode(dns.rcode.FORMERR)
            return resp
        question = query.question[0]
        # udp_answer_limit cuts plain UDP answers only; an EDNS query's are cut by its size
        limit = UDP_ANSWER_LIMIT if udp and udp_size(query) == PLAIN_UDP_SIZE else None
        with self.store.cond:
            found = self._answer(question.name, question.rdtype, resp, limit)
        if not found:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        if not resp.answer:
            resp.authority.append(self._soa())
        if udp:
            _trim(resp, udp_size(query))
        return resp

    def _labels(self, qname: dns.name.Name) -> list[str] | None:
        if not qname.is_subdomain(self.domain):
            return None
        labels = [lab.decode().lower() for lab in qname.relativize(self.domain).labels]
        dc = self.store.datacenter.lower()
        for kind in ("service", "node", "addr"):
            if len(labels) >= 2 and labels[-2:] == [kind, dc]:
                return labels[:-1]
        return labels

    def _answer(self, qname, rdtype, resp, limit) -> bool:
        labels = self._labels(qname)
        if not labels or len(labels) < 2:
            return False
        kind, head = labels[-1], labels[:-1]
        if kind == "node" and len(head) == 1:
            return self._node(qname, rdtype, resp, head[0])
        if kind == "addr" and len(head) == 1:
            return self._addr(qname, rdtype, resp, head[0])
        if kind != "service" or len(head) > 2:
            return False
        if len(head) == 2 and head[0].startswith("_") and head[1].startswith("_"):
            service, tag = head[0][1:], head[1][1:]
            tag = "" if tag == "tcp" else tag
        else:
            service, tag = head[-1], head[0] if len(head) == 2 else ""
        return self._service(qname, rdtype, resp, service, tag, limit)

    def _node(self, qname, rdtype, resp, name) -> bool:
        node = next((n for k, n in self.store.nodes.items() if k.lower() == name), None)
        if node is None:
            return False
        if rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and _is_ipv4(node["Address"]):
            resp.answer.append(_rrset(qname, dns.rdatatype.A, node["Address"]))
        if rdtype in (dns.rdatatype.TXT, dns.rdatatype.ANY) and node["Meta"]:
            rdatas = [TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [f"{k}={v}".encode()[:255]])
                      for k, v in sorted(node["Meta"].items())]
            resp.answer.append(dns.rrset.from_rdata_list(qname, 0, rdatas))
        return True

    def _addr(self, qname, rdtype, resp, hexip) -> bool:
        try:
            ip = str(ipaddress.IPv4Address(bytes.fromhex(hexip)))
        except ValueError:
            return False
        if rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
            resp.answer.append(_rrset(qname, dns.rdatatype.A, ip))
        return True

    def _service(self, qname, rdtype, resp, service, tag, limit) -> bool:
        s = self.store
        rows = [(n, svc) for n, svc in s.instances()
                if svc["Service"].lower() == service
                and (not tag or tag in (t.lower() for t in svc["Tags"]))
                and s.healthy_for_dns(n["Node"], svc["ID"])]
        if not rows:
            return False
        RNG.shuffle(rows)
        if limit is not None:
            rows = rows[:limit]
        for node, svc in rows:
            address = svc["Address"] or node["Address"]
            if rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and _is_ipv4(address):
                resp.answer.append(_rrset(qname, dns.rdatatype.A, address))
            if rdtype in (dns.rdatatype.SRV, dns.rdatatype.ANY):
                target = self._srv_target(node, svc)
                weight = self._srv_weight(node, svc)
                resp.answer.append(_rrset(qname, dns.rdatatype.SRV,
                                          f"1 {weight} {svc['Port']} {target}"))
                if _is_ipv4(address):
                    resp.additional.append(_rrset(dns.name.from_text(target),
                                                  dns.rdatatype.A, address))
        return True

    def _srv_weight(self, node: dict, svc: dict) -> int:
        """agent/dns.go findWeight: Weights.Passing while every check passes, Weights.Warning
        when one warns (critical instances are already left out)."""
        weights = svc["Weights"] or {}
        statuses = {c["Status"] for c in self.store.checks_of(node["Node"], svc["ID"])}
        if "warning" in statuses:
            return int(weights.get("Warning", 1))
        return int(weights.get("Passing", 1))

    def _srv_target(self, node: dict, svc: dict) -> str:
        dc = self.store.datacenter
        if svc["Address"] and svc["Address"] != node["Address"] and _is_ipv4(svc["Address"]):
            hexip = ipaddress.IPv4Address(svc["Address"]).packed.hex()
            return f"{hexip}.addr.{dc}.{self.domain}"
        return f"{node['Node']}.node.{dc}.{self.domain}"

    def _soa(self) -> dns.rrset.RRset:
        serial = int(time.time()) & 0xFFFFFFFF
        text = f"ns.{self.domain} hostmaster.{self.domain} {serial} 3600 600 86400 0"
        return _rrset(self.domain, dns.rdatatype.SOA, text)


def _trim(resp: dns.message.Message, size: int) -> None:
    """Drop answers (and the additional records of their targets) until the message fits
    `size` bytes, setting TC when any went: Consul's size trim of UDP answers."""
    for _ in range(len(resp.answer)):
        if len(resp.to_wire(max_size=65535)) <= size or not resp.answer:
            return
        resp.answer.pop()
        kept = {getattr(r, "target", None) for rrset in resp.answer for r in rrset}
        resp.additional = [x for x in resp.additional if x.name in kept]
        resp.flags |= dns.flags.TC


def _rrset(name, rdtype, text) -> dns.rrset.RRset:
    rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)
    return dns.rrset.from_rdata(name, 0, rdata)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


class _Udp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        wire = self.server.answer(data, udp=True)
        if wire:
            sock.sendto(wire, self.client_address)


class _Tcp(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.connection.settimeout(5)
        for _ in range(100):  # bounded number of queries per connection
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            data = self.rfile.read(struct.unpack("!H", head)[0])
            wire = self.server.answer(data, udp=False)
            if not wire:
                return
            self.wfile.write(struct.pack("!H", len(wire)) + wire)


class _Mixin:
    resolver: DnsResolver

    def answer(self, data: bytes, udp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - malformed packets are dropped, like Consul
            return None
        resp = self.resolver.respond(query, udp)
        return resp.to_wire(max_size=udp_size(query) if udp else 65535)


class UdpDnsServer(_Mixin, socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True


class TcpDnsServer(_Mixin, socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_dns(store: Store, host: str, port: int) -> tuple[list, tuple[str, int]]:
    """Start UDP and TCP on the same port (port 0 picks a free one for both)."""
    resolver = DnsResolver(store)
    for _ in range(20):  # a free UDP port may be taken on TCP: retry a bounded number of times
        udp = UdpDnsServer((host, port), _Udp)
        actual = udp.server_address[1]
        try:
            tcp = TcpDnsServer((host, actual), _Tcp)
        except OSError:
            udp.server_close()
            if port:
                raise
            continue
        servers = [udp, tcp]
        for server in servers:
            server.resolver = resolver
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                             name="consul-standin-dns", daemon=True).start()
        return servers, (host, actual)
    raise OSError("could not find a port free for both UDP and TCP DNS")


