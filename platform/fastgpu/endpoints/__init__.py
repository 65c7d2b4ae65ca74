"""Model endpoints (issue 11): the pure rules of serving a tenant's model on Ray Serve.

Vocabulary: an *endpoint* is a tenant's named, authenticated HTTP door to a model
(``/t/<tenant>/<name>/`` on the platform's address); each *version* of it is one Serve
application (``<name>-v<N>``) in the tenant's own Ray cluster, whose replicas run only on the
endpoint's elastic lease; an *endpoint token* opens exactly one endpoint.

Modules, one rule each (no Ray, no store; the controller and the service act on them):

* :mod:`.tokens`: the token format, its hash and the check a replica makes (401/403/404);
* :mod:`.payload`: what a request body must be (422 says what was expected, 413 when too big);
* :mod:`.autoscale`: how many GPUs an endpoint's lease should hold, from Serve's demand;
* :mod:`.models`: the API's shapes (deploy, update, what an endpoint looks like).
"""
