"""Proxies come from the environment once per client (aiohttp's trust_env
looked them up in a thread on every request)."""

from __future__ import annotations

import pytest

from bridge.platform.client import proxy_from_env


def test_the_scheme_s_proxy_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert proxy_from_env("https://api.xpander.ai/v1") == "http://proxy.internal:3128"
    assert proxy_from_env("http://emulator:9016") == "http://plain.internal:3128"


def test_no_proxy_hosts_go_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.svc.cluster.local")
    assert proxy_from_env("https://bridge.ns.svc.cluster.local/x") is None
    assert proxy_from_env("https://localhost:8443/") is None


def test_without_proxy_settings_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for scheme in ("HTTPS", "HTTP", "ALL"):
        for name in (f"{scheme}_PROXY", f"{scheme.lower()}_proxy"):
            monkeypatch.delenv(name, raising=False)
    assert proxy_from_env("https://api.xpander.ai/v1") is None
