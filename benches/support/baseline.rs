//! The benchmarks' baseline server: KEDA's proto with fixed answers and no work, behind the
//! same transport as `serve` (`server::grpc_server` and the capped accept loop).

use blend_scaler::proto::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use blend_scaler::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};
use blend_scaler::transport::{self, TransportLimits};
use tonic::{Request, Response, Status};

pub const METRIC: &str = "blended-replicas";

/// The baseline: the same proto, fixed answers, no work.
struct Baseline;

#[tonic::async_trait]
impl ExternalScaler for Baseline {
    async fn is_active(
        &self,
        _r: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        Ok(Response::new(IsActiveResponse { result: true }))
    }

    type StreamIsActiveStream = tokio_stream::Once<Result<IsActiveResponse, Status>>;

    async fn stream_is_active(
        &self,
        _r: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        Ok(Response::new(tokio_stream::once(Ok(IsActiveResponse {
            result: true,
        }))))
    }

    async fn get_metric_spec(
        &self,
        _r: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: METRIC.into(),
                target_size: 1,
                target_size_float: 1.0,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        _r: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: METRIC.into(),
                metric_value: 3,
                metric_value_float: 3.0,
            }],
        }))
    }

    type StreamMetricSpecStream = tokio_stream::Once<Result<GetMetricSpecResponse, Status>>;

    async fn stream_metric_spec(
        &self,
        r: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        let spec = self.get_metric_spec(r).await?.into_inner();
        Ok(Response::new(tokio_stream::once(Ok(spec))))
    }
}

/// Runs the baseline server on a loopback port and prints the address; runs until killed.
pub fn main() {
    // `serve`'s logging too (JSON on stderr, `RUST_LOG` as the scaler gets it): a process
    // with no subscriber pays tracing's `log` fallback (enabled by axum's and kube's
    // features) in each of h2's trace spans, about 9,000 instructions per call that neither
    // `serve` nor any server that logs pays (BENCHMARKS.md, "gRPC throughput under h2load").
    let _telemetry = blend_scaler::telemetry::init(blend_scaler::telemetry::LogFormat::Json)
        .expect("the baseline's logging");
    let rt = super::runtime();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        // The transport the scaler uses, so only the work differs.
        let limits = TransportLimits::default();
        blend_scaler::server::grpc_server(&limits)
            .add_service(ExternalScalerServer::new(Baseline))
            .serve_with_incoming(transport::accept_plain(listener, &limits))
            .await
            .unwrap();
    });
}
