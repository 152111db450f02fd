"""Bad input at the edges: one clear error, nothing stored, nothing created."""

from __future__ import annotations

import datetime as dt

import pytest

from vsan_flows import api, exceptions
from vsan_flows.cmd import cli
from vsan_flows.images import LocalImageService
from vsan_flows.runtime import inspect


@pytest.mark.parametrize(("instance", "image", "says"), [
    ("x" * 300, "img", "300 characters long; the limit is 80"),
    ("inst", "abc\n", "control characters"),
    ("in\tst", "img", "control characters"),
    ("", "img", "non-empty"),
    ("inst", "i" * 256, "the limit is 255"),
])
def test_plan_refuses_names_vcenter_or_the_store_cannot_take(conf, instance, image, says):
    with pytest.raises(exceptions.InvalidInput, match=says):
        api.plan(conf, "spawn", instance, image)


def test_plan_accepts_nova_shaped_names(conf):
    p = api.plan(conf, "snapshot", "0b4f5a0e-3d6c-4c35-9a43-7c1f0e9e1a2b", "img-1")
    assert p.store["instance_name"].startswith("0b4f")


def test_local_store_refuses_an_id_with_a_newline(tmp_path):
    store = LocalImageService(tmp_path)
    with pytest.raises(exceptions.ImageNotFound):
        store.show("abc\n")
    with pytest.raises(exceptions.VsanFlowsError):
        store.create({"id": "abc\n", "name": "x"})
    assert not list(tmp_path.glob("*\n*"))


def test_an_age_too_large_is_a_value_error():
    assert inspect.parse_age("2w") == dt.timedelta(weeks=2)
    with pytest.raises(ValueError, match="too long ago"):
        inspect.parse_age("99999999999999w")


def test_cli_age_overflow_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--config-file", str(tmp_path / "none.conf"), "flows", "list",
                  "--older-than", "99999999999999w"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "too long ago" in err and "Traceback" not in err
