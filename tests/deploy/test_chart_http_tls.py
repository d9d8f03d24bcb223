"""metrics.tls: the HTTP port (/metrics, /decisions, probes) over TLS with the gRPC
certificate (serve --http-tls), HTTPS probes, and https scrapes that verify it."""

from __future__ import annotations

import pytest

import deploylib as d
from test_chart import by_kind, container, env_of, one

HTTP_PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def _endpoint(docs, kind):
    spec = one(docs, kind)["spec"]
    return (spec.get("endpoints") or spec.get("podMetricsEndpoints"))[0]


def test_the_http_port_is_plain_unless_metrics_tls_is_on(renders):
    for name in ("default", "tls-secret-values", "cert-manager-csi-values", "production-values"):
        docs = d.manifests_of(renders[name])
        assert "BLEND_SCALER_HTTP_TLS" not in env_of(docs), name
        for probe in HTTP_PROBES:
            http = container(docs)[probe].get("httpGet")
            assert http is None or "scheme" not in http, f"{name} {probe}"
        for kind in ("ServiceMonitor", "PodMonitor"):
            if by_kind(docs, kind):
                ep = _endpoint(docs, kind)
                assert ep["scheme"] == "http" and "tlsConfig" not in ep, f"{name} {kind}"


def test_metrics_tls_serves_probes_and_scrapes_over_https(renders):
    docs = d.manifests_of(renders["metrics-tls-values"])
    env = env_of(docs)
    assert env["BLEND_SCALER_HTTP_TLS"]["value"] == "true"
    # The same certificate as gRPC, and gRPC keeps its mTLS: the HTTP port asks for none.
    assert env["BLEND_SCALER_TLS_CERT"]["value"] == "/etc/blend-scaler/tls/tls.crt"
    assert "BLEND_SCALER_TLS_CLIENT_CA" in env
    c = container(docs)
    for probe in HTTP_PROBES:
        assert c[probe]["httpGet"]["scheme"] == "HTTPS", probe
        assert c[probe]["httpGet"]["port"] == "http-metrics", probe
    for kind in ("ServiceMonitor", "PodMonitor"):
        ep = _endpoint(docs, kind)
        assert ep["port"] == "http-metrics" and ep["scheme"] == "https", kind
        assert ep["tlsConfig"] == {
            "serverName": f"{d.RELEASE_NAME}.{d.RELEASE_NAMESPACE}.svc",
            # cert-manager's Certificate writes the CA beside the key in the same Secret.
            "ca": {"secret": {"name": "blend-scaler-tls", "key": "ca.crt"}},
        }, kind


def test_the_scrape_ca_and_server_name_can_be_given(crd_table):
    values = {
        "tls": {"enabled": True, "source": "certManagerCsi", "certManagerCsi": {"issuerName": "platform-ca"}},
        "metrics": {
            "tls": {
                "enabled": True,
                "scrapeCA": {"configMap": {"name": "platform-ca-bundle", "key": "ca.crt"}},
                "scrapeServerName": "blend-scaler.internal.example.com",
            },
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True},
        },
    }
    docs = d.manifests_of(d.helm_render(values))
    assert d.validate_docs(docs) == []
    for kind in ("ServiceMonitor", "PodMonitor"):
        assert _endpoint(docs, kind)["tlsConfig"] == {
            "serverName": "blend-scaler.internal.example.com",
            "ca": {"configMap": {"name": "platform-ca-bundle", "key": "ca.crt"}},
        }
    values["metrics"]["tls"] = {"enabled": True, "scrapeInsecureSkipVerify": True}
    docs = d.manifests_of(d.helm_render(values))
    assert d.validate_docs(docs) == []
    tls = _endpoint(docs, "ServiceMonitor")["tlsConfig"]
    assert tls["insecureSkipVerify"] is True and "ca" not in tls


@pytest.mark.parametrize(
    "values, match",
    [
        ({"metrics": {"tls": {"enabled": True}}}, "needs tls.enabled"),
        (
            {
                "tls": {"enabled": True, "source": "certManagerCsi", "certManagerCsi": {"issuerName": "x"}},
                "metrics": {"tls": {"enabled": True}, "serviceMonitor": {"enabled": True}},
            },
            "metrics.tls.scrapeCA",
        ),
    ],
)
def test_metrics_tls_that_could_not_work_is_refused(values, match):
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=match):
        d.helm_render(values)


def test_the_schema_refuses_a_scrape_ca_of_two_kinds():
    both = {"secret": {"name": "a", "key": "ca.crt"}, "configMap": {"name": "b", "key": "ca.crt"}}
    assert d.schema_errors({"metrics": {"tls": {"scrapeCA": both}}})
    assert d.schema_errors({"metrics": {"tls": {"scrapeCA": {"secret": {"name": "a"}}}}})
    assert d.schema_errors({"metrics": {"tls": {"enabled": "yes"}}})
