"""Locust users for ``benchmarks/serve_load.py``: each posts one JPEG to ``/v1/predict`` as fast as it
is answered (no think time). Run by the benchmark as a subprocess (Locust monkeypatches the
process it runs in with gevent: it is never imported in-process):

    locust -f benchmarks/locustfile.py --headless -u 64 -r 64 --run-time 5s --host http://127.0.0.1:PORT

``REXNET_LOAD_IMAGE``: the JPEG to send (the benchmark writes one).
"""

from __future__ import annotations

import os

from locust import FastHttpUser, constant, task

with open(os.environ["REXNET_LOAD_IMAGE"], "rb") as f:
    IMAGE = f.read()


class PredictUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def predict(self) -> None:
        self.client.post("/v1/predict?topk=5", data=IMAGE, headers={"Content-Type": "image/jpeg"})
