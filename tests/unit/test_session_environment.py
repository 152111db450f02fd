"""Our vCenter sessions resolve the environment once (session.settle_environment).

requests reads proxies and CA bundles from the environment on every call of a session that
trusts it; ours read them once when the session is made. These check that what the session
then uses for vCenter's SOAP URL is what requests would have used, for the settings a user
sets before starting the service (docs/nova.md): ``https_proxy``, ``no_proxy``,
``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, with and without ``[vmware] ca_file``/insecure.
"""

from __future__ import annotations

import pathlib

import pytest
import requests
from oslo_vmware import vim as vim_mod

from vsan_flows.simulator import wsdl
from vsan_flows.vsphere.session import settle_environment

HOST = "vc.example.test"
PROXY = "http://proxy.example.test:3128"
ENV = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY",
       "no_proxy", "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture(scope="module")
def wsdl_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return "file://" + str(wsdl.generate(tmp_path_factory.mktemp("wsdl")))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def _vim(wsdl_url: str, cacert: str | None = None, insecure: bool = False):
    return vim_mod.Vim(protocol="https", host=HOST, port=443, wsdl_url=wsdl_url,
                       cacert=cacert, insecure=insecure)


def _what_requests_would_use(vim) -> tuple[str | None, bool | str]:
    """(proxy, verify) of one SOAP POST as oslo.vmware's transport sends it."""
    transport = vim.client.options.transport
    http = transport.session
    prep = http.prepare_request(requests.Request("POST", vim.soap_url, data=b"x"))
    settings = http.merge_environment_settings(prep.url, {}, None, transport.verify, None)
    return requests.utils.select_proxy(prep.url, settings["proxies"]), settings["verify"]


CASES = {
    "nothing set": ({}, {}, (None, True)),
    "https_proxy": ({"https_proxy": PROXY}, {}, (PROXY, True)),
    "HTTPS_PROXY": ({"HTTPS_PROXY": PROXY}, {}, (PROXY, True)),
    "all_proxy": ({"all_proxy": PROXY}, {}, (PROXY, True)),
    "http_proxy only": ({"http_proxy": PROXY}, {}, (None, True)),
    "no_proxy names vCenter": ({"https_proxy": PROXY, "no_proxy": f"other,{HOST}"}, {},
                               (None, True)),
    "no_proxy domain": ({"https_proxy": PROXY, "no_proxy": ".example.test"}, {},
                        (None, True)),
    "no_proxy elsewhere": ({"https_proxy": PROXY, "no_proxy": "other.test"}, {},
                           (PROXY, True)),
    "REQUESTS_CA_BUNDLE": ({"REQUESTS_CA_BUNDLE": "/etc/vc-ca.pem"}, {},
                           (None, "/etc/vc-ca.pem")),
    "CURL_CA_BUNDLE": ({"CURL_CA_BUNDLE": "/etc/curl-ca.pem"}, {}, (None, "/etc/curl-ca.pem")),
    "REQUESTS_ before CURL_": ({"REQUESTS_CA_BUNDLE": "/r.pem", "CURL_CA_BUNDLE": "/c.pem"}, {},
                               (None, "/r.pem")),
    "ca_file wins over the bundle": ({"REQUESTS_CA_BUNDLE": "/etc/vc-ca.pem"},
                                     {"cacert": "/etc/conf-ca.pem"}, (None, "/etc/conf-ca.pem")),
    "insecure ignores the bundle": ({"REQUESTS_CA_BUNDLE": "/etc/vc-ca.pem"},
                                    {"insecure": True}, (None, False)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_settled_session_uses_what_requests_would(case, wsdl_url, monkeypatch):
    env, kwargs, expected = CASES[case]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    trusting = _vim(wsdl_url, **kwargs)
    settled = _vim(wsdl_url, **kwargs)
    settle_environment(settled)

    assert _what_requests_would_use(trusting) == expected  # requests' own answer, per call
    assert settled.client.options.transport.session.trust_env is False
    assert _what_requests_would_use(settled) == expected


def test_settled_session_reads_the_environment_no_more(wsdl_url, monkeypatch):
    # The point of settling: a call no longer consults os.environ (nor ~/.netrc).
    monkeypatch.setenv("https_proxy", PROXY)
    settled = _vim(wsdl_url)
    settle_environment(settled)
    monkeypatch.setenv("https_proxy", "http://elsewhere.test:1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/changed.pem")
    assert _what_requests_would_use(settled) == (PROXY, True)


def test_netrc_is_not_read(wsdl_url, monkeypatch, tmp_path: pathlib.Path):
    # vCenter logs in by SOAP and a cookie; Basic auth from netrc would only be noise.
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {HOST} login someone password something\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    trusting, settled = _vim(wsdl_url), _vim(wsdl_url)
    settle_environment(settled)
    req = requests.Request("POST", trusting.soap_url, data=b"x")
    assert "Authorization" in trusting.client.options.transport.session.prepare_request(
        req).headers
    assert "Authorization" not in settled.client.options.transport.session.prepare_request(
        req).headers
