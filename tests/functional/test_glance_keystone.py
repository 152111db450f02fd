"""Glance behind a real keystone: who may do what, and what a refusal looks like to the user.

A real keystone (tests/functional/keystone.py: sqlite, fernet tokens, bootstrapped as an
operator does) and a glance-api of this module's own with keystonemiddleware in its pipeline
and glance's own project-scoped policy defaults. The image service is in keystone's catalog,
so our configured service user finds Glance the way a deployment does (no endpoint given).

Users: ``glance`` (keystonemiddleware's), ``vsan-flows`` (our [glance] service user: admin
and service roles in the service project, as nova's service user has), ``alice`` (member of
project demo: the user whose request a nova spawn or snapshot carries) and ``bob`` (member
of project other). What each test shows is what a user or an operator would meet: a wrong
service password, an expired or revoked user token (401), an image the user's project may
not change (403) or not even see (Glance answers 404), and a flow resumed after a crash with
nothing but the service user's configuration.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import pytest

from tests.functional.conftest import make_conf
from vsan_flows import api, exceptions, imagecache
from vsan_flows.glance import GlanceImageService
from vsan_flows.runtime import persistence
from vsan_flows.simulator import disks

MiB = 1024 * 1024
SERVICE_USER = "vsan-flows"
PASSWORDS = {"glance": "glance-" + uuid.uuid4().hex, SERVICE_USER: "svc-" + uuid.uuid4().hex,
             "alice": "alice-" + uuid.uuid4().hex, "bob": "bob-" + uuid.uuid4().hex}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """keystone, its users, and a glance-api that asks keystone about every token."""
    from tests.functional import glance_api as launcher_g
    from tests.functional import keystone as launcher_k

    try:
        ks = launcher_k.start(tmp_path_factory.mktemp("keystone"))
    except launcher_k.KeystoneError as exc:
        pytest.fail(f"keystone did not start: {exc}", pytrace=False)
    glance = None
    try:
        ks.user("glance", PASSWORDS["glance"], "service", ["admin", "service"])
        ks.user(SERVICE_USER, PASSWORDS[SERVICE_USER], "service", ["admin", "service"])
        ks.user("alice", PASSWORDS["alice"], "demo", ["member"])
        ks.user("bob", PASSWORDS["bob"], "other", ["member"])
        glance = launcher_g.start(tmp_path_factory.mktemp("glance-keystone"), keystone={
            "www_authenticate_uri": ks.url, "auth_url": ks.url, "auth_type": "password",
            "username": "glance", "password": PASSWORDS["glance"],
            "project_name": "service", "user_domain_id": "default",
            "project_domain_id": "default"})
        ks.register_endpoint("image", "glance", glance.url)
        yield SimpleNamespace(ks=ks, glance=glance)
    finally:
        if glance is not None:
            glance.stop()
        ks.stop()


def _service_overrides(sec, password: str | None = None) -> dict:
    """[glance] as a deployer writes it: keystone's URL and the service user, no endpoint."""
    return {"vsan_flows__image_service": "glance", "glance__auth_type": "password",
            "glance__auth_url": sec.ks.url, "glance__username": SERVICE_USER,
            "glance__password": password or PASSWORDS[SERVICE_USER],
            "glance__project_name": "service", "glance__user_domain_id": "default",
            "glance__project_domain_id": "default", "glance__timeout": 60}


@pytest.fixture
def conf(secured, simulator, wsdl_url, tmp_path):
    return make_conf(simulator, wsdl_url, tmp_path / "state", **_service_overrides(secured))


def _token(sec, user: str) -> str:
    project = {"alice": "demo", "bob": "other"}[user]
    return sec.ks.token(user, PASSWORDS[user], project)


def _as(conf, token: str | None = None) -> GlanceImageService:
    return GlanceImageService.from_conf(conf, context=token)


@pytest.fixture(scope="module")
def vmdk(tmp_path_factory):
    path = tmp_path_factory.mktemp("disks") / "ks.vmdk"
    disks.make_stream_optimized(path, 64 * MiB, data_mib=16)
    return path


@pytest.fixture
def alices_image(secured, conf, vmdk):
    """An image alice uploaded: private to project demo."""
    images = _as(conf, _token(secured, "alice"))
    image_id = images.add_file(vmdk, name="alice-" + uuid.uuid4().hex[:6])
    yield image_id
    _delete_quietly(_as(conf), image_id)


def _delete_quietly(images, image_id: str) -> None:
    try:
        images.delete(image_id)
    except exceptions.ImageNotFound:
        pass


def _no_vm(control, name: str) -> bool:
    return not [vm for vm in control.status()["vms"] if vm["name"] == name]


def _requests_for(glance, image_id: str, since: int = 0) -> list[tuple[str, str]]:
    """(status line, token) of each request about this image, from glance-api's access log."""
    out = []
    for line in glance.access_lines()[since:]:
        if f"/images/{image_id}" in line:
            head, _, token = line.rpartition(" token=")
            out.append((head, token))
    return out


# --------------------------------------------------------------------------- 401


def test_a_wrong_service_password_is_a_clear_refusal(secured, simulator, wsdl_url, tmp_path,
                                                     vsphere, control, alices_image):
    wrong = "wrong-" + uuid.uuid4().hex
    bad = make_conf(simulator, wsdl_url, tmp_path / "state",
                    **_service_overrides(secured, password=wrong))
    name = "ks401-" + uuid.uuid4().hex[:6]
    with pytest.raises(exceptions.ImageServiceRefused) as err:
        api.spawn(bad, name, alices_image, vsphere=vsphere)
    text = str(err.value)
    assert err.value.status == 401, text
    assert alices_image in text and "[glance]" in text and "password" in text, text
    assert wrong not in text
    assert _no_vm(control, name)  # refused before vCenter was asked for anything


@pytest.mark.parametrize("how", ["expired", "revoked"])
def test_an_expired_or_revoked_user_token_is_a_clear_refusal(how, secured, conf, vsphere,
                                                             control, alices_image):
    """nova hands us the user's token; keystone no longer honours it: Glance answers 401,
    the spawn stops before vCenter work and says which image and what to check."""
    if how == "expired":
        # Long enough to be used once on a loaded machine before it ends.
        token, expired_at = secured.ks.expiring_token("alice", PASSWORDS["alice"], "demo", 15)
        assert secured.ks.owner_of(token) == "alice"
        assert _as(conf, token).show(alices_image).status == "active"  # valid until then
        time.sleep(max(0.0, expired_at - time.monotonic()))
    else:
        # Not shown to Glance first: keystonemiddleware caches a token it validated (for
        # [keystone_authtoken] token_cache_time) and honours it until then, revoked or not.
        token = _token(secured, "alice")
        assert secured.ks.owner_of(token) == "alice"
        secured.ks.revoke(token)
        assert secured.ks.owner_of(token) is None
    mark = len(secured.glance.access_lines())
    name = "ks401-" + uuid.uuid4().hex[:6]
    with pytest.raises(exceptions.ImageServiceRefused) as err:
        api.spawn(conf, name, alices_image, vsphere=vsphere, context=token)
    text = str(err.value)
    assert err.value.status == 401 and alices_image in text, text
    assert "token" in text, text
    assert token not in text
    assert _no_vm(control, name)
    # Glance itself refused it (not a check of ours), and the refusal was not retried with
    # the service user behind the user's back.
    seen = _requests_for(secured.glance, alices_image, mark)
    assert seen and all(" 401 " in head and tok == token for head, tok in seen), seen


# --------------------------------------------------------------------------- 403 / hidden


def test_what_a_project_may_not_change_or_see(secured, conf, alices_image):
    """bob's project: alice's private image does not exist for it (Glance says 404), and the
    admin's public image may be read but not changed or deleted (403)."""
    admin = GlanceImageService.from_conf(conf)  # the service user is an admin
    public = admin.create({"name": "public-" + uuid.uuid4().hex[:6], "visibility": "public",
                           "disk_format": "vmdk", "container_format": "bare"})
    try:
        bob = _as(conf, _token(secured, "bob"))
        for call in (bob.show, bob.open):
            with pytest.raises(exceptions.ImageNotFound) as nf:
                call(alices_image)
            assert alices_image in str(nf.value)
        assert bob.show(public).status == "queued"
        with pytest.raises(exceptions.ImageServiceRefused) as err:
            bob.delete(public)
        assert err.value.status == 403 and public in str(err.value)
        assert "[glance]" in str(err.value) and "may use this image" in str(err.value)
        assert admin.show(public).status == "queued"
    finally:
        admin.delete(public)


def test_a_snapshot_into_an_image_the_project_cannot_modify(secured, conf, vsphere, control,
                                                            alices_image, destroy_after):
    """alice snapshots into an image of another project (the admin's public one): Glance
    refuses the first change (403), the snapshot is rolled back in vCenter, and the image -
    not hers to delete - is left as it was, without data."""
    alice = _token(secured, "alice")
    name = "ks403-" + uuid.uuid4().hex[:6]
    destroy_after.append(name)
    result = api.spawn(conf, name, alices_image, vsphere=vsphere, context=alice)
    destroy_after.append(result["shadow_vm"]["name"])
    admin = GlanceImageService.from_conf(conf)
    target = admin.create({"name": "not-alices-" + uuid.uuid4().hex[:6],
                           "visibility": "public"})
    try:
        with pytest.raises(exceptions.ImageServiceRefused) as err:
            api.snapshot(conf, name, target, vsphere=vsphere, context=alice)
        text = str(err.value)
        assert err.value.status == 403 and target in text, text
        assert "may use this image" in text
        left = admin.show(target)
        assert left.status == "queued" and not left.size
        # Rolled back completely: an image we may not delete, left empty, is no undo that
        # failed (retrying it could never succeed), so no admin has a flow to revert.
        with contextlib.closing(persistence.open_backend(conf)) as backend:
            (state,) = [fd.state for book, fd in persistence.list_flow_details(backend)
                        if (book.meta or {}).get("instance") == name
                        and book.meta.get("operation") == "snapshot"]
        assert state == "REVERTED"
        vm = next(v for v in control.status()["vms"] if v["name"] == name)
        assert vm["snapshots"] == 0
        assert not [v for v in control.status()["vms"]
                    if v["name"].startswith("vsanflows-export")]
    finally:
        admin.delete(target)


# --------------------------------------------------------------------------- resume


def test_spawn_killed_mid_stream_resumes_with_the_service_user_alone(
        secured, conf, simulator, wsdl_url, tmp_path, vsphere, control, alices_image,
        destroy_after):
    """The compute process dies while alice's image streams in; she has logged out since
    (her token is revoked). The restarted service has its [glance] configuration and nothing
    else: the flow completes, and keystone says every request it made was the service
    user's."""
    from tests.functional.conftest import ROOT

    db_url = f"sqlite:///{tmp_path}/flows.sqlite"
    alice = _token(secured, "alice")
    instance = "ksresume-" + uuid.uuid4().hex[:6]
    destroy_after.append(instance)
    mark = len(secured.glance.access_lines())
    control.throttle_nfc(2 * MiB, direction="upload")
    args = {"sim_state": str(simulator.state_file), "wsdl_url": wsdl_url,
            "state_dir": str(tmp_path / "state"), "db_url": db_url, "op": "spawn",
            "instance": instance, "image_id": alices_image, "cue": "transfer",
            "conf": _service_overrides(secured), "context": alice}
    proc = subprocess.run([sys.executable, "-m", "tests.functional.crash_child",
                           json.dumps(args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-3000:])
    control.reset()
    before = {tok for _h, tok in _requests_for(secured.glance, alices_image, mark)}
    assert before and {secured.ks.owner_of(t) for t in before} == {"alice"}
    secured.ks.revoke(alice)

    mark = secured.glance.settled_mark(_as(conf))
    resumed = make_conf(simulator, wsdl_url, tmp_path / "state",
                        vsan_flows__persistence_connection=db_url,
                        vsan_flows__import_retries=2, **_service_overrides(secured))
    outcomes = api.resume_unfinished(resumed, vsphere=vsphere)
    assert [o[2] for o in outcomes] == ["completed"], outcomes
    names = {vm["name"] for vm in control.status()["vms"]}
    assert instance in names
    (cached,) = [n for n in names if n.startswith(imagecache.vm_name(alices_image, ""))]
    destroy_after.append(cached)
    after = _requests_for(secured.glance, alices_image, mark)
    assert any("/file " in head and " 200 " in head for head, _t in after), after
    assert {secured.ks.owner_of(t) for _h, t in after} == {SERVICE_USER}
