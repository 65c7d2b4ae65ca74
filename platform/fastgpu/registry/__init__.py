"""The model registry: a tenant's trained models as ``<tenant>/<model>:v<N>``.

Rules (one module each):
* :mod:`.refs`: what a model reference is (``[tenant/]name[:vN|:latest]``);
* :mod:`.files`: a model's files are a *content-addressed folder* in the tenant's own storage,
  ``models/<name>/<hash[:16]>/``, written by the tenant's own processes (the SDK, inside its job
  or on its machine) and hashed there; the server never reads or writes tenant files to
  register one, it records the folder and hash. Whoever loads a model (a deployment) checks
  the hash first (:func:`.files.verify`);
* :mod:`.shapes`: the API's input and output;
* :class:`fastgpu.service.registry.RegistryService`: who may register, see, resolve and delete.

Another tenant never sees a tenant's models: the API answers 404, and the files sit in the
tenant's 0700 storage folder owned by its OS user (tenant clusters, secure mode).
"""

from fastgpu.registry.files import content_hash, publish, verify
from fastgpu.registry.refs import ModelRef, parse_ref

__all__ = ["ModelRef", "content_hash", "parse_ref", "publish", "verify"]
