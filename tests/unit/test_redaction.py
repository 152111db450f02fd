"""The one module that knows what a secret looks like (vsan_flows.redaction)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from vsan_flows import redaction


def test_secrets_scrubber_knows_the_configured_values():
    conf = SimpleNamespace(
        vmware=SimpleNamespace(host_password="vc-Pa55word"),
        vsan_flows=SimpleNamespace(persistence_connection="postgresql://u:db%40pw@h/x"))
    secrets = redaction.Secrets.from_conf(conf)
    text = secrets.scrub("<ns0:password>vc-Pa55word</ns0:password> db@pw db%40pw "
                         "Cookie: vmware_soap_session=zzz; /nfc/52aa-bb/disk")
    assert "vc-Pa55word" not in text and "db@pw" not in text and "db%40pw" not in text
    assert "vmware_soap_session" not in text and "zzz" not in text and "52aa" not in text


@pytest.mark.parametrize("text", [
    "PUT https://10.0.0.5/nfc/52e1-77aa/disk-0.vmdk failed",
    "Cookie: vmware_soap_session=\"abc123\"; Path=/",
    "vmware_cgi_ticket=ticket-42",
    "<soapenv:Body><Login><userName>u</userName><password>hunter22</password></Login>",
    "mysql+pymysql://root:hunter22@db/flows",
])
def test_patterns_mask_each_kind(text):
    out = redaction.redact(text)
    for secret in ("52e1-77aa", "abc123", "ticket-42", "hunter22"):
        assert secret not in out


def test_mask_mapping_masks_secret_keys_recursively():
    value = {"lease": "lease-1", "auth": {"password": "x"}, "items": [{"ticket": "t"}]}
    assert redaction.mask_mapping(value) == {"lease": "lease-1", "auth": "***",
                                             "items": [{"ticket": "***"}]}


def test_short_values_are_not_scrubbed_literally():
    assert redaction.Secrets(["ab", "abcd"]).remove("ab abcd") == "ab ***"


def test_filter_cleans_message_and_traceback():
    secrets = redaction.Secrets(["s3cr3t-pw"])
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "login with %s to %s",
                               ("s3cr3t-pw", "https://h/nfc/aa-bb/disk"), None)
    try:
        raise RuntimeError("s3cr3t-pw rejected")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert redaction.RedactingFilter(secrets).filter(record)
    assert "s3cr3t-pw" not in record.getMessage() and "aa-bb" not in record.getMessage()
    assert "s3cr3t-pw" not in record.exc_text


def test_our_errors_are_scrubbed_where_they_are_made():
    import pickle

    from vsan_flows import exceptions

    err = exceptions.TransferError(
        "the disk transfer broke: PUT https://10.0.0.5/nfc/52e1-77aa/disk-0.vmdk refused; "
        "store mysql://root:hunter22@db/flows")
    assert "52e1-77aa" not in str(err) and "hunter22" not in str(err)
    assert "52e1-77aa" not in str(pickle.loads(pickle.dumps(err)))
    assert "52e1-77aa" not in str(exceptions.IncompleteTransfer(
        "The upload to https://h/nfc/52e1-77aa/disk", bytes_sent=1, bytes_expected=2))


def test_suds_stays_quiet_when_the_root_logger_turns_to_debug_later():
    """suds.metrics logs whole SOAP replies (lease URLs, session keys) at DEBUG."""
    root, suds, metrics = (logging.getLogger(), logging.getLogger("suds"),
                           logging.getLogger("suds.metrics"))
    saved = (root.level, suds.level, metrics.level)
    try:
        root.setLevel(logging.WARNING)
        suds.setLevel(logging.NOTSET)
        metrics.setLevel(logging.NOTSET)
        redaction.guard_library_logs()
        root.setLevel(logging.DEBUG)  # the host turns debug on after we connected
        assert not metrics.isEnabledFor(logging.DEBUG)
        assert not suds.isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        suds.setLevel(saved[1])
        metrics.setLevel(saved[2])
