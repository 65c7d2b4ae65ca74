"""The FastGPU control API as a Serve application.

``fastgpu up`` deploys it for you; to run it by hand on a cluster where the controller runs:

    serve run serve_apps.control_api:app

(it binds Serve's proxy, 127.0.0.1:8000 by default; set Serve's http_options to change that).
"""

from fastgpu.api.serve import ApiServer

app = ApiServer.bind()  # type: ignore[attr-defined]
