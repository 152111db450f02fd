"""Our errors as nova's exception classes, chosen by what nova's compute manager does.

* ``ImageUnacceptable`` makes the build abort (the server goes ERROR, no reschedule): another
  host cannot make a bad image good.
* ``ImageNotFound`` / ``InstanceNotFound``: nova's own meaning.
* ``InstanceDeployFailure`` makes the build reschedule: vCenter trouble may be local.
* a failed snapshot is a plain ``NovaException`` with our message; nova deletes the image.
* at the driver's start, ``InvalidConfiguration`` for a setting that cannot work (an untrusted
  vCenter certificate: the operator must set ``[vmware] ca_file``), as nova's libvirt driver
  raises for its own settings; ``HypervisorUnavailable`` for a vCenter that does not answer.
  Either stops nova-compute with our one-line message.
"""

from __future__ import annotations

from nova import exception as nova_exc

from vsan_flows import exceptions


def for_spawn(exc: Exception, *, instance_uuid: str, image_id: str) -> Exception:
    if isinstance(exc, exceptions.InvalidImage):
        return nova_exc.ImageUnacceptable(image_id=image_id, reason=str(exc))
    if isinstance(exc, exceptions.ImageNotFound):
        return nova_exc.ImageNotFound(image_id=image_id)
    if isinstance(exc, exceptions.InstanceNotFound):
        return nova_exc.InstanceNotFound(instance_id=instance_uuid)
    return nova_exc.InstanceDeployFailure(reason=str(exc))


def for_snapshot(exc: Exception, *, instance_uuid: str, image_id: str) -> Exception:
    if isinstance(exc, exceptions.InstanceNotFound):
        return nova_exc.InstanceNotFound(instance_id=instance_uuid)
    if isinstance(exc, exceptions.ImageNotFound):
        return nova_exc.ImageNotFound(image_id=image_id)
    return nova_exc.NovaException(
        message=f"snapshot of instance {instance_uuid} to image {image_id} failed: {exc}")


def for_start(exc: Exception) -> Exception:
    if isinstance(exc, (exceptions.VCenterCertificateError, exceptions.ConfigError)):
        return nova_exc.InvalidConfiguration(message=str(exc))
    if isinstance(exc, exceptions.VCenterUnreachable):
        return nova_exc.HypervisorUnavailable(message=str(exc))
    return nova_exc.NovaException(message=str(exc))
