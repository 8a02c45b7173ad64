"""The chart's NetworkPolicy: the HTTP port in; DNS, Kafka and the platform out.

Rendered by the real helm; kubernetes-validate checks it with every other object
(test_chart.py::test_every_object_is_valid_kubernetes). Here: the rules
themselves, and what they admit, evaluated for plain addresses the way a CNI
would (an ipBlock peer, or no peer at all meaning any address).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.helpers import (
    FULL_VALUES,
    Manifest,
    bridge_container,
    kinds,
    only,
    render,
    render_error,
    workload,
)

#: The defaults, spelled out: a change to them should be a change to this test.
DEFAULT_SPEC: dict[str, Any] = {
    "podSelector": {
        "matchLabels": {
            "app.kubernetes.io/name": "xpander-bridge",
            "app.kubernetes.io/instance": "rel",
        }
    },
    "policyTypes": ["Ingress", "Egress"],
    "ingress": [{"ports": [{"port": 8080, "protocol": "TCP"}]}],
    "egress": [
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    },
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
        },
        {"ports": [{"port": 9092, "protocol": "TCP"}, {"port": 9093, "protocol": "TCP"}]},
        {
            "to": [
                {
                    "ipBlock": {
                        "cidr": "0.0.0.0/0",
                        "except": [
                            "10.0.0.0/8",
                            "172.16.0.0/12",
                            "192.168.0.0/16",
                            "100.64.0.0/10",
                            "169.254.0.0/16",
                        ],
                    }
                }
            ],
            "ports": [{"port": 443, "protocol": "TCP"}],
        },
    ],
}


def _policy(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = only(manifests, "NetworkPolicy")["spec"]
    return spec


def _peer_admits(peer: dict[str, Any], address: str) -> bool:
    """An ipBlock peer's verdict on an address; selector peers name pods, not addresses."""
    block = peer.get("ipBlock")
    if block is None:
        return False
    ip = ipaddress.ip_address(address)
    if ip not in ipaddress.ip_network(block["cidr"]):
        return False
    return not any(ip in ipaddress.ip_network(cidr) for cidr in block.get("except", []))


def _port_admits(port: dict[str, Any], number: int, protocol: str) -> bool:
    if port.get("protocol", "TCP") != protocol:
        return False
    if "port" not in port:
        return True
    return bool(port["port"] <= number <= port.get("endPort", port["port"]))


def egress_admits(policy: dict[str, Any], address: str, port: int, protocol: str = "TCP") -> bool:
    """Whether some egress rule lets a pod open (address, port)."""
    for rule in policy["egress"]:
        to, ports = rule.get("to"), rule.get("ports")
        if to and not any(_peer_admits(peer, address) for peer in to):
            continue
        if ports and not any(_port_admits(p, port, protocol) for p in ports):
            continue
        return True
    return False


# --- the defaults --------------------------------------------------------------------


def test_default_policy_has_exactly_the_documented_rules(
    default_manifests: list[Manifest],
) -> None:
    policy = only(default_manifests, "NetworkPolicy")
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["metadata"]["namespace"] == "bridge-ns"
    assert policy["spec"] == DEFAULT_SPEC


def test_policy_selects_exactly_the_bridge_pods(
    default_manifests: list[Manifest], full_manifests: list[Manifest]
) -> None:
    for manifests in (default_manifests, full_manifests):
        selector = _policy(manifests)["podSelector"]["matchLabels"]
        pods = workload(manifests)["spec"]
        assert selector == pods["selector"]["matchLabels"]
        assert selector.items() <= pods["template"]["metadata"]["labels"].items()
        assert selector == only(manifests, "Service")["spec"]["selector"]


@pytest.mark.parametrize(
    ("address", "port", "protocol", "admitted"),
    [
        # the platform: public addresses on 443
        ("34.120.10.20", 443, "TCP", True),
        ("2.16.0.1", 443, "TCP", True),
        # ...but not the cluster's own services, nodes or the metadata endpoint
        ("10.96.0.1", 443, "TCP", False),  # a typical kubernetes.default ClusterIP
        ("172.20.0.1", 443, "TCP", False),
        ("192.168.1.10", 443, "TCP", False),
        ("100.64.0.10", 443, "TCP", False),
        ("169.254.169.254", 443, "TCP", False),
        ("34.120.10.20", 80, "TCP", False),  # plain HTTP: no
        # Kafka: its two usual ports, any address (a broker may be anywhere)
        ("10.1.2.3", 9092, "TCP", True),
        ("10.1.2.3", 9093, "TCP", True),
        ("52.1.2.3", 9093, "TCP", True),
        ("10.1.2.3", 9094, "TCP", False),
        # DNS only to kube-dns's pods (a selector, which no bare address matches)
        ("10.96.0.10", 53, "UDP", False),
        ("8.8.8.8", 53, "UDP", False),
        # nothing else
        ("10.1.2.3", 22, "TCP", False),
        ("10.1.2.3", 6443, "TCP", False),
        ("10.1.2.3", 5432, "TCP", False),
    ],
)
def test_default_egress_admits_only_dns_kafka_and_the_platform(
    default_manifests: list[Manifest], address: str, port: int, protocol: str, admitted: bool
) -> None:
    assert egress_admits(_policy(default_manifests), address, port, protocol) is admitted


def test_policy_is_on_by_default_and_can_be_turned_off(
    helm: Path, default_manifests: list[Manifest]
) -> None:
    assert "NetworkPolicy" in kinds(default_manifests)
    assert "NetworkPolicy" not in kinds(render(helm, set_values=["networkPolicy.enabled=false"]))


# --- the ingress port follows the container's ------------------------------------------


@pytest.mark.parametrize("port", [None, 9102, 18080])
def test_ingress_port_is_the_containers_http_port(helm: Path, port: int | None) -> None:
    manifests = render(helm, set_values=[] if port is None else [f"config.http.port={port}"])
    [container_port] = bridge_container(manifests)["ports"]
    [rule] = _policy(manifests)["ingress"]
    assert rule["ports"] == [{"port": container_port["containerPort"], "protocol": "TCP"}]
    assert container_port["containerPort"] == (port or 8080)
    assert "from" not in rule  # from anywhere, by default


# --- custom peers and ports --------------------------------------------------------------


def test_custom_peers_and_ports_appear_as_given(full_manifests: list[Manifest]) -> None:
    values = yaml.safe_load(FULL_VALUES.read_text())["networkPolicy"]
    policy = _policy(full_manifests)
    [ingress] = policy["ingress"]
    assert ingress["from"] == values["ingress"]["from"]
    assert ingress["ports"] == [{"port": 9102, "protocol": "TCP"}]  # full-values' http.port
    expected = [
        {"to": values["egress"][name]["to"], "ports": values["egress"][name]["ports"]}
        for name in ("dns", "kafka", "platform")
    ]
    assert policy["egress"] == expected + values["egress"]["extra"]


def test_custom_rules_admit_what_they_say(full_manifests: list[Manifest]) -> None:
    policy = _policy(full_manifests)
    assert egress_admits(policy, "169.254.20.10", 53, "UDP")  # NodeLocal DNSCache
    assert egress_admits(policy, "10.20.0.5", 3128)  # the proxy, from `extra`
    assert not egress_admits(policy, "10.20.0.6", 3128)
    assert not egress_admits(policy, "203.0.113.7", 443)  # the added `except`
    assert egress_admits(policy, "198.51.100.7", 443)
    # Kafka is named by namespace: no bare address gets through on its port.
    assert not egress_admits(policy, "10.1.2.3", 9093)


def test_peers_without_ports_and_ports_without_peers(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "networkPolicy": {
                    "egress": {
                        # every port of the Kafka namespace
                        "kafka": {
                            "to": [{"namespaceSelector": {"matchLabels": {"team": "kafka"}}}],
                            "ports": [],
                        },
                        # the platform on 443 anywhere (e.g. a public cluster)
                        "platform": {"to": [], "ports": [{"port": 443, "protocol": "TCP"}]},
                    }
                }
            }
        )
    )
    egress = _policy(render(helm, [values]))["egress"]
    assert egress[1] == {"to": [{"namespaceSelector": {"matchLabels": {"team": "kafka"}}}]}
    assert egress[2] == {"ports": [{"port": 443, "protocol": "TCP"}]}


def test_a_rule_that_would_admit_everything_is_refused(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("networkPolicy:\n  egress:\n    kafka:\n      to: []\n      ports: []\n")
    error = render_error(helm, [values])
    assert "networkPolicy.egress.kafka has neither `to` nor `ports`" in error


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("networkPolicy.egress.kafka.ports[0].protocol=HTTP", "protocol"),
        ("networkPolicy.egress.platform.ports[0].port=70000", "port"),
        ("networkPolicy.ingress.to[0].ipBlock.cidr=10.0.0.0/8", "to"),
        ("networkPolicy.egress.kafka.peers[0].ipBlock.cidr=10.0.0.0/8", "peers"),
        ("networkPolicy.egress.extra[0].to[0].ipblock.cidr=10.0.0.0/8", "ipblock"),
    ],
)
def test_values_schema_refuses(helm: Path, setting: str, complaint: str) -> None:
    error = render_error(helm, set_values=[setting])
    assert "schema" in error
    assert complaint in error
