"""A local Kubernetes API test server for Helm's `lookup`: the read-only slice
a render asks for, in the API server's JSON. No cluster can run here."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

import deploylib as d

NS = d.RELEASE_NAMESPACE
APISERVICE = "v1beta1.external.metrics.k8s.io"


def _status_404(path):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"{path} not found", "reason": "NotFound", "code": 404}


class FakeKube:
    """The read-only slice of the Kubernetes API that Helm's `lookup` uses:
    discovery of the two group-versions (to map a kind to its resource) and
    GET of single objects, in the API server's JSON."""

    DISCOVERY = {
        "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret", "verbs": ["get", "list"]}]},
        "/apis/apiregistration.k8s.io/v1": {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "apiregistration.k8s.io/v1", "resources": [
            {"name": "apiservices", "singularName": "apiservice", "namespaced": False, "kind": "APIService", "verbs": ["get", "list"]}]},
    }

    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                fake.requests.append(path)
                body = fake.objects.get(path) or fake.DISCOVERY.get(path)
                code = 200 if body is not None else 404
                data = json.dumps(body if body is not None else _status_404(path)).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def put_apiservice(self, service):
        spec = {"group": "external.metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100, "versionPriority": 100,
                "caBundle": base64.b64encode(b"not ours").decode()}
        if service is not None:
            spec["service"] = service
        self.objects[f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}"] = {
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": APISERVICE, "uid": "0b6e3f7e-1111-4c1e-9a00-000000000001"}, "spec": spec}

    def put_secret(self, name, data):
        self.objects[f"/api/v1/namespaces/{NS}/secrets/{name}"] = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": NS}, "data": data}

    def render(self, values):
        import helm_python as helm

        kubeconfig = yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        })
        config = helm.Config(kubeconfig_content=kubeconfig, namespace=NS)
        try:
            with helm.Chart.load(str(d.CHART)) as chart:
                chart.validate_schema(values)
                return d.manifests_of(config.render(chart, values, name=d.RELEASE_NAME, namespace=NS, is_install=True))
        finally:
            config.close()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
