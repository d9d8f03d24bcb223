pub mod proto {
    tonic::include_proto!("externalscaler");
}
