//! kubectl as the real client of the metrics adapter. The real `blend-scaler serve` binary
//! runs with `--external-metrics-addr` and a KUBECONFIG pointing at the test kit's Kubernetes
//! API double; a `BlendedMetric` is applied there; kubectl reaches the adapter through the
//! test kit's aggregator (client-certificate login, then the front-proxy certificate and
//! `X-Remote-*` headers, as kube-apiserver forwards), and directly with only the front-proxy
//! certificate, which carries no identity.
//!
//! With `BLEND_SCALER_TRANSCRIPT=DIR` the kubectl commands and their outputs are written to
//! files in DIR (scripts/adapter-transcript puts them in docs/metrics-adapter.md).

#[path = "support/certs.rs"]
mod certs;
#[path = "support/keda.rs"]
mod keda;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use blend_scaler::crd::BlendedMetricStatus;
use blend_scaler::external_metrics::quantity;
use blend_scaler::proto::external_scaler_client::ExternalScalerClient;
use blend_scaler::simulate::hpa::{self, Metric};
use blend_scaler_testkit::aggregator::{Aggregator, AggregatorOptions};
use blend_scaler_testkit::kube_api::{Decision, Kind};
use blend_scaler_testkit::{KubeApi, StaticPrometheus};
use certs::{ca, leaf_in_groups};
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::{Value, json};

const SERVICE_NAME: &str = "blend-scaler-adapter.blend-scaler.svc";
const HPA_USER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// kubectl on PATH; the tests need the real client and say so when it is missing.
fn kubectl() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
        .expect(
            "kubectl is not on PATH: these tests run the real kubectl against the adapter \
             (scripts/test installs it; on Debian `apt-get install kubectl` from the \
             google-cloud-cli repository)",
        )
}

/// The commands run and what they printed, for the docs.
#[derive(Default)]
struct Transcript(String);

impl Transcript {
    fn note(&mut self, text: &str) {
        let _ = writeln!(self.0, "# {text}");
    }

    /// Into `$BLEND_SCALER_TRANSCRIPT/<part>.txt`, when that folder is given.
    fn save(&self, part: &str) {
        if let Some(dir) = std::env::var_os("BLEND_SCALER_TRANSCRIPT") {
            std::fs::write(Path::new(&dir).join(format!("{part}.txt")), &self.0).unwrap();
        }
    }
}

/// The real `serve` binary, stopped when dropped.
struct Serve {
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    api: KubeApi,
    prom: StaticPrometheus,
    aggregator: Aggregator,
    serve: Serve,
    adapter_port: u16,
    grpc_port: u16,
    transcript: Transcript,
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let serving = ca("adapter-serving-ca");
    let (cert, key) = leaf_in_groups(
        &serving,
        "blend-scaler-adapter",
        &[],
        &["localhost", "127.0.0.1", SERVICE_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    write(d, "serving-ca.crt", &serving.pem);
    write(d, "adapter.crt", &cert);
    write(d, "adapter.key", &key);
    let front_proxy = ca("front-proxy-ca");
    let (fp_cert, fp_key) = leaf_in_groups(
        &front_proxy,
        "front-proxy-client",
        &[],
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    write(d, "front-proxy-ca.crt", &front_proxy.pem);
    write(d, "front-proxy-client.crt", &fp_cert);
    write(d, "front-proxy-client.key", &fp_key);
    // The emulated kube-apiserver: its serving CA, and the CA its users' certificates chain to.
    let cluster = ca("cluster-ca");
    let (api_cert, api_key) = leaf_in_groups(
        &cluster,
        "kube-apiserver",
        &[],
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    write(d, "cluster-ca.crt", &cluster.pem);
    let users = ca("client-ca");
    let (hpa_cert, hpa_key) = leaf_in_groups(
        &users,
        HPA_USER,
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
        ],
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    write(d, "hpa.crt", &hpa_cert);
    write(d, "hpa.key", &hpa_key);

    let api = KubeApi::start().await.unwrap();
    api.write_kubeconfig(&d.join("kubeconfig")).unwrap();
    // What kube-apiserver publishes for extension servers: the front-proxy CA and its CN.
    api.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
        "data": {
            "requestheader-client-ca-file": front_proxy.pem,
            "requestheader-allowed-names": "[\"front-proxy-client\"]",
        },
    }));
    // The bootstrap role system:controller:horizontal-pod-autoscaler: get and list on
    // external.metrics.k8s.io for the HPA's service account; nothing for anyone else.
    api.set_policy(|spec| {
        let r = &spec["resourceAttributes"];
        if spec["user"] == HPA_USER
            && r["group"] == "external.metrics.k8s.io"
            && (r["verb"] == "list" || r["verb"] == "get")
        {
            Decision::allow("RBAC: allowed by ClusterRoleBinding \"system:controller:horizontal-pod-autoscaler\"")
        } else {
            Decision::no_opinion()
        }
    });
    let prom = StaticPrometheus::start().await.unwrap();
    prom.set(65.0);

    let (grpc_port, http_port, adapter_port) = (free_port(), free_port(), free_port());
    let log = d.join("serve.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_blend-scaler"))
        .args([
            "serve",
            "--grpc-addr",
            &format!("127.0.0.1:{grpc_port}"),
            "--http-addr",
            &format!("127.0.0.1:{http_port}"),
            "--allow-loopback-upstreams",
            "--refresh-interval",
            "1s",
            "--log-format",
            "text",
            "--external-metrics-addr",
            &format!("127.0.0.1:{adapter_port}"),
            "--external-metrics-tls-cert",
        ])
        .arg(d.join("adapter.crt"))
        .arg("--external-metrics-tls-key")
        .arg(d.join("adapter.key"))
        .args([
            "--external-metrics-service",
            "blend-scaler/blend-scaler-adapter",
        ])
        .env("KUBECONFIG", d.join("kubeconfig"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("the blend-scaler binary starts");
    let serve = Serve { child, log };
    wait_for_port(adapter_port, &serve).await;
    wait_for_port(grpc_port, &serve).await;

    let aggregator = Aggregator::start(AggregatorOptions {
        serving_cert_pem: api_cert,
        serving_key_pem: api_key,
        client_ca_pem: users.pem.clone(),
        backend: ([127, 0, 0, 1], adapter_port).into(),
        backend_server_name: SERVICE_NAME.into(),
        backend_ca_pem: serving.pem.clone(),
        proxy_client_cert_pem: fp_cert,
        proxy_client_key_pem: fp_key,
    })
    .await
    .unwrap();
    Fixture {
        dir,
        api,
        prom,
        aggregator,
        serve,
        adapter_port,
        grpc_port,
        transcript: Transcript::default(),
    }
}

async fn wait_for_port(port: u16, serve: &Serve) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("serve did not listen on {port}; its log:\n{}", serve.log());
}

fn blended_metric(prom: &StaticPrometheus, name: &str, threshold: &str) -> Value {
    json!({
        "apiVersion": "blend-scaler.io/v1alpha1", "kind": "BlendedMetric",
        "metadata": {"name": name, "namespace": "production"},
        "spec": {"metadata": {
            "serverAddress": prom.url(),
            "query": "sum(rate(http_requests_total[2m]))",
            "threshold": threshold,
        }},
    })
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Fixture {
    /// kubectl logged in to the aggregator as the HPA controller.
    fn via_aggregator(&self) -> Vec<String> {
        vec![
            "--server".into(),
            self.aggregator.url(),
            "--certificate-authority".into(),
            "pki/cluster-ca.crt".into(),
            "--client-certificate".into(),
            "pki/hpa.crt".into(),
            "--client-key".into(),
            "pki/hpa.key".into(),
        ]
    }

    /// kubectl straight at the adapter with the aggregator's front-proxy certificate.
    fn direct(&self) -> Vec<String> {
        vec![
            "--server".into(),
            format!("https://127.0.0.1:{}", self.adapter_port),
            "--certificate-authority".into(),
            "pki/serving-ca.crt".into(),
            "--tls-server-name".into(),
            SERVICE_NAME.into(),
            "--client-certificate".into(),
            "pki/front-proxy-client.crt".into(),
            "--client-key".into(),
            "pki/front-proxy-client.key".into(),
        ]
    }

    /// Runs kubectl in a folder where `pki` is the certificates, and records it.
    async fn kubectl(&mut self, login: Vec<String>, args: &[&str]) -> Run {
        let pki = self.dir.path().join("pki");
        if !pki.exists() {
            std::os::unix::fs::symlink(self.dir.path(), &pki).unwrap();
        }
        let mut cmd = tokio::process::Command::new(kubectl());
        cmd.current_dir(self.dir.path())
            .env("KUBECONFIG", "/dev/null")
            .args(&login)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("kubectl finishes within 60 s")
            .expect("kubectl runs");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let shown: Vec<String> = login
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .map(|a| {
                if a.contains(['?', '&', ' ']) {
                    format!("'{a}'")
                } else {
                    a.to_string()
                }
            })
            .collect();
        let t = &mut self.transcript.0;
        let _ = writeln!(t, "$ kubectl {}", shown.join(" "));
        for line in run.stdout.lines().chain(run.stderr.lines()) {
            let _ = writeln!(t, "{line}");
        }
        let _ = writeln!(t, "# exit status {}\n", run.code);
        run
    }

    async fn status_when(
        &self,
        name: &str,
        ready: impl Fn(&BlendedMetricStatus) -> bool,
    ) -> BlendedMetricStatus {
        for _ in 0..200 {
            if let Some(s) = self
                .api
                .get(Kind::BlendedMetric, "production", name)
                .and_then(|o| o.get("status").cloned())
            {
                let s: BlendedMetricStatus = serde_json::from_value(s).unwrap();
                if ready(&s) {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no such status on production/{name}; serve's log:\n{}",
            self.serve.log()
        );
    }

    /// What KEDA gets over gRPC for the same metadata.
    async fn keda_value(&self, threshold: &str) -> i64 {
        let mut client =
            ExternalScalerClient::connect(format!("http://127.0.0.1:{}", self.grpc_port))
                .await
                .unwrap();
        let mut metadata = keda::metadata([
            ("serverAddress", self.prom.url().as_str()),
            ("query", "sum(rate(http_requests_total[2m]))"),
            ("threshold", threshold),
        ]);
        metadata.insert(keda::SCALER_ADDRESS.0.into(), keda::SCALER_ADDRESS.1.into());
        let obj = keda::object("production", "orders-scaledobject", metadata);
        keda::metric_value(&mut client, &obj, keda::METRIC)
            .await
            .unwrap()
            .0
    }
}

fn value_path(name: &str) -> String {
    format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/production/blended-replicas?labelSelector=blend-scaler.io%2Fname%3D{name}"
    )
}

fn ready(s: &BlendedMetricStatus) -> (&str, &str) {
    let c = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    (c.status.as_str(), c.reason.as_str())
}

#[tokio::test]
async fn kubectl_reads_the_value_keda_gets_and_a_404_once_the_blended_metric_is_deleted() {
    let mut f = start().await;
    let applied = blended_metric(&f.prom, "orders", "10");
    f.api.apply(applied.clone());
    f.transcript.note(&format!(
        "applied to the Kubernetes API (the test kit's double): {applied}"
    ));
    let status = f.status_when("orders", |s| s.value.is_some()).await;
    assert_eq!(ready(&status), ("True", "Serving"));
    assert_eq!(status.metric_name.as_deref(), Some("blended-replicas"));
    f.transcript.note(&format!(
        "status the adapter wrote back: {}",
        serde_json::to_string(&status).unwrap()
    ));

    let keda = f.keda_value("10").await;
    assert_eq!(keda, 7);
    f.transcript.note(&format!(
        "KEDA's gRPC GetMetrics for the same metadata: metricValue {keda}"
    ));
    let login = f.via_aggregator();
    let run = f
        .kubectl(login.clone(), &["get", "--raw", &value_path("orders")])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(list["kind"], "ExternalMetricValueList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["value"], keda.to_string());
    assert_eq!(list["items"][0]["metricName"], "blended-replicas");
    assert_eq!(status.value.as_deref(), Some("7"));
    // The HPA's arithmetic on what kubectl got (`AverageValue: "1"`, MilliValue, the 10 %
    // tolerance, as simulate's model ports it): from 2 or 20 pods it lands on 7; at 7 it stays.
    let served = quantity::parse_milli(list["items"][0]["value"].as_str().unwrap()).unwrap();
    let metric = Metric {
        value: served as f64 / 1000.0,
        target: 1.0,
    };
    for current in [2, 7, 20] {
        assert_eq!(
            hpa::proposal(metric, current, 0.1),
            7,
            "from {current} pods"
        );
    }
    // The adapter saw the HPA's identity the aggregator forwarded.
    let forwarded = f.aggregator.forwarded();
    let read = forwarded
        .iter()
        .find(|r| r.path_and_query.contains("labelSelector"))
        .unwrap();
    assert_eq!(read.user, HPA_USER);
    assert!(read.groups.iter().any(|g| g == "system:authenticated"));
    // And asked kube-apiserver whether that identity may list the metric.
    let review = f
        .api
        .reviews()
        .into_iter()
        .next()
        .expect("a SubjectAccessReview");
    assert_eq!(review["spec"]["user"], HPA_USER);
    assert_eq!(
        review["spec"]["resourceAttributes"],
        json!({"namespace": "production", "verb": "list", "group": "external.metrics.k8s.io",
               "version": "v1beta1", "resource": "blended-replicas"})
    );

    let run = f
        .kubectl(login.clone(), &["get", "--raw", &value_path("unknown")])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(
            "Error from server (NotFound): the server could not find the metric blended-replicas"
        ),
        "{}",
        run.stderr
    );

    let run = f.kubectl(login.clone(), &["api-resources"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("external.metrics.k8s.io/v1beta1")
            && run.stdout.contains("ExternalMetricValueList"),
        "{}",
        run.stdout
    );

    f.api.delete(Kind::BlendedMetric, "production", "orders");
    f.transcript
        .note("deleted production/orders from the Kubernetes API");
    let mut gone = None;
    for _ in 0..50 {
        let run = f
            .kubectl(login.clone(), &["get", "--raw", &value_path("orders")])
            .await;
        if run.code != 0 {
            gone = Some(run);
            break;
        }
        // Only the last attempt belongs in the transcript.
        let keep = f.transcript.0.rfind("$ kubectl").unwrap_or(0);
        f.transcript.0.truncate(keep);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = gone.expect("the deleted BlendedMetric stops being served");
    assert!(gone.stderr.contains("(NotFound)"), "{}", gone.stderr);
    f.transcript.save("1-value");
}

#[tokio::test]
async fn bad_metadata_is_ready_false_with_the_key_and_kubectl_gets_its_error() {
    let mut f = start().await;
    let applied = blended_metric(&f.prom, "typo", "ten");
    f.api.apply(applied.clone());
    f.transcript.note(&format!("applied: {applied}"));
    let status = f.status_when("typo", |s| !s.conditions.is_empty()).await;
    f.transcript.note(&format!(
        "status the adapter wrote back: {}",
        serde_json::to_string(&status).unwrap()
    ));
    assert_eq!(ready(&status), ("False", "InvalidMetadata"));
    assert!(
        status.errors.iter().any(|e| e.key == "threshold"),
        "{status:?}"
    );
    let login = f.via_aggregator();
    let run = f
        .kubectl(login, &["get", "--raw", &value_path("typo")])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("(NotFound)") && run.stderr.contains("threshold"),
        "{}",
        run.stderr
    );
    f.transcript.save("2-invalid");
}

#[tokio::test]
async fn the_front_proxy_certificate_alone_carries_no_identity_and_no_certificate_no_session() {
    let mut f = start().await;
    f.api.apply(blended_metric(&f.prom, "orders", "10"));
    f.status_when("orders", |s| s.value.is_some()).await;
    f.transcript.note(
        "straight at the adapter with the aggregator's front-proxy certificate but without \
         X-Remote-User (kubectl cannot send it): no identity",
    );
    let direct = f.direct();
    let run = f
        .kubectl(direct.clone(), &["get", "--raw", &value_path("orders")])
        .await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("(Unauthorized)"), "{}", run.stderr);

    // A token keeps kubectl from prompting for a user name; the adapter has no token login.
    let mut anonymous: Vec<String> = direct[..6].to_vec();
    anonymous.push("--token=none".into());
    let run = f
        .kubectl(anonymous, &["get", "--raw", &value_path("orders")])
        .await;
    assert_ne!(run.code, 0);
    // No session, so no answer at all. In TLS 1.3 the client may be writing its request when
    // the server's `certificate required` alert arrives, and then sees a broken pipe instead.
    assert!(
        run.stderr.starts_with("Unable to connect to the server: ")
            && ["certificate required", "broken pipe", "connection reset"]
                .iter()
                .any(|why| run.stderr.contains(why)),
        "{}",
        run.stderr
    );
    f.transcript.save("3-direct");
}
