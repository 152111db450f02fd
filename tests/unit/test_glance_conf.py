"""[glance] as nova has it, the one place that picks the image service, and Glance's errors."""

import pytest
from glanceclient import exc as glance_exc
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from vsan_flows import api, conf, exceptions
from vsan_flows.glance import GlanceImageService, translate
from vsan_flows.images import LocalImageService


def _conf(tmp_path, **overrides):
    c = cfg.ConfigOpts()
    conf.register_opts(c)
    c([], project="vsan-flows-test", default_config_files=[])
    c.set_override("state_dir", str(tmp_path), "vsan_flows")
    for key, value in overrides.items():
        group, _, name = key.partition("__")
        c.set_override(name, value, group)
    return c


def test_glance_group_is_keystoneauths(tmp_path):
    c = _conf(tmp_path)
    assert c.glance.service_type == "image"
    assert c.glance.endpoint_override is None and c.glance.auth_type is None
    assert c.glance.cafile is None and c.glance.insecure is False
    names = {o.dest for g, opts in conf.list_opts() if g == "glance" for o in opts}
    assert {"auth_type", "auth_url", "username", "password", "project_name", "cafile",
            "endpoint_override", "valid_interfaces", "region_name", "timeout"} <= names


def test_registering_beside_nova_style_glance_options_is_harmless():
    """nova registers keystoneauth's session/auth/adapter options on [glance]; so do we."""
    c = cfg.ConfigOpts()
    ks_loading.register_session_conf_options(c, "glance")
    ks_loading.register_auth_conf_options(c, "glance")
    ks_loading.register_adapter_conf_options(c, "glance")
    conf.register_opts(c)
    c([], project="vsan-flows-test", default_config_files=[])
    assert c.glance.service_type == "image"


def test_local_store_is_the_default(tmp_path):
    assert isinstance(api.image_service(_conf(tmp_path)), LocalImageService)


def test_glance_is_chosen_by_configuration(tmp_path):
    c = _conf(tmp_path, vsan_flows__image_service="glance",
              glance__endpoint_override="http://127.0.0.1:9/v2")
    service = api.image_service(c, context="a-user-token")
    assert isinstance(service, GlanceImageService)
    assert service._adapter_kwargs["endpoint_override"] == "http://127.0.0.1:9"


def test_glance_without_endpoint_or_service_user_is_a_config_error(tmp_path):
    c = _conf(tmp_path, vsan_flows__image_service="glance")
    with pytest.raises(exceptions.ConfigError) as err:
        api.image_service(c)
    assert "[glance] endpoint_override" in str(err.value)


def test_unknown_image_service_is_refused(tmp_path):
    c = _conf(tmp_path)
    with pytest.raises(ValueError):
        c.set_override("image_service", "swift", "vsan_flows")


@pytest.mark.parametrize("status, cls, words", [
    (401, glance_exc.HTTPUnauthorized, "[glance]"),
    (403, glance_exc.HTTPForbidden, "[glance]"),
    (409, glance_exc.HTTPConflict, "new, empty image"),
    (413, glance_exc.HTTPOverLimit, "image_size_cap"),
])
def test_refusals_name_the_image_and_the_fix(status, cls, words):
    err = translate(cls(details="Glance said no"), "img-1", "upload data to")
    assert isinstance(err, exceptions.ImageServiceRefused) and err.status == status
    assert "img-1" in str(err) and words in str(err) and "Glance said no" in str(err)


def test_415_without_a_class_of_its_own_is_still_recognised():
    err = translate(glance_exc.HTTPException(
        details="415 Unsupported Media Type: Image disk_format vmdk does not match stream "
                "data raw"), "img-2", "upload data to")
    assert isinstance(err, exceptions.ImageServiceRefused) and err.status == 415
    assert "disk_format=vmdk" in str(err)


def test_404_is_image_not_found_and_5xx_is_retryable():
    assert isinstance(translate(glance_exc.HTTPNotFound(), "img-3", "show"),
                      exceptions.ImageNotFound)
    err = translate(glance_exc.HTTPServiceUnavailable(), "img-3", "show")
    assert isinstance(err, exceptions.ImageServiceUnavailable)
    assert not isinstance(err, exceptions.ImageServiceRefused)


def test_background_hash_matches_hashlib_and_keeps_memory_bounded():
    import hashlib
    import os

    from vsan_flows.glance import _BackgroundHash

    chunk = os.urandom(3 << 20)
    bg, ref, most = _BackgroundHash("sha512"), hashlib.sha512(), 0
    for _ in range(12):
        bg.update(chunk)
        ref.update(chunk)
        most = max(most, bg._pending)
    assert bg.hexdigest() == ref.hexdigest()
    assert most <= max(_BackgroundHash.PENDING_LIMIT, len(chunk))
    assert not bg._thread.is_alive()  # the hasher thread ends with the digest
