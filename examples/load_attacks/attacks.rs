//! The attacks, by name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use blend_scaler::proto::ScaledObjectRef;
use tonic::transport::Channel;

use crate::hostile::{hostile_servicebus, prom, servicebus};
use crate::{Args, cron_big, flood, fmt, hammer, md, object, tiny_cron};

/// The attacks, by name; each returns its row's title and what the attacker got.
pub async fn attack(kind: &str, a: &Args, upstream: &str, ch: &[Channel]) -> (String, String) {
    match kind {
        // Capacity: distinct tiny objects, over as many namespaces as a direct caller likes.
        "objects" => {
            let objs = (0..a.objects)
                .map(|i| object(&format!("ns-{}", i % 100), &format!("so-{i}"), tiny_cron()))
                .collect();
            let got = flood(ch, objs).await;
            (
                format!("{} distinct cron objects over 100 namespaces", a.objects),
                fmt(got),
            )
        }
        // Capacity: 8 KB of distinct windows (more than 16: invalid).
        "cronbig" => {
            let objs = (0..200)
                .map(|i| object("cronbig", &format!("big-{i}"), cron_big(i, None)))
                .collect();
            (
                "200 objects with 8 KB of distinct windows".into(),
                fmt(flood(ch, objs).await),
            )
        }
        // Capacity: the same cut to the 16 windows allowed, every text distinct, 20 namespaces.
        "cron16" => {
            let objs = (0..2_000)
                .map(|i| {
                    object(
                        &format!("cron-{}", i % 20),
                        &format!("w16-{i}"),
                        cron_big(i, Some(16)),
                    )
                })
                .collect();
            (
                "2,000 objects with 16 distinct windows each".into(),
                fmt(flood(ch, objs).await),
            )
        }
        // Capacity: distinct Prometheus servers, one call each, then their refreshes.
        "servers" => {
            let objs = (0..a.servers)
                .map(|i| {
                    object(
                        &format!("groups-{}", i % 10),
                        &format!("prom-{i}"),
                        prom(format!("{upstream}/g{i}"), "up".into()),
                    )
                })
                .collect();
            let got = then_refreshes(ch, objs, a.seconds).await;
            (
                format!(
                    "{} distinct Prometheus servers, then {} s of refreshes",
                    a.servers, a.seconds
                ),
                fmt(got),
            )
        }
        // Capacity and CPU: 15 MiB answers, 16 servers x 16 queries, refreshing every 5 s.
        "big" => (
            format!(
                "15 MiB answers: 256 queries on 16 servers, then {} s of refreshes",
                a.seconds
            ),
            fmt(hostile_queries(ch, upstream, "big", 256, a.seconds).await),
        ),
        // CPU: answers under every cap but large (9,000 series): decoded every refresh.
        "decode" => (
            format!(
                "800 KiB answers (9,000 series): 64 queries, {} s of refreshes",
                a.seconds
            ),
            fmt(hostile_queries(ch, upstream, "many", 64, a.seconds).await),
        ),
        // CPU: Service Bus list pages under every cap but large, parsed every refresh.
        "servicebus-decode" => {
            let hosts = hostile_servicebus(16).await;
            let objs = (0..64)
                .map(|i| {
                    object(
                        "decode",
                        &format!("queue-{i}"),
                        servicebus(&hosts[i % 16], format!("queue-{i:04}")),
                    )
                })
                .collect();
            let got = then_refreshes(ch, objs, a.seconds).await;
            (
                format!(
                    "800 KiB Service Bus pages (1,000 entries): 64 queues on 16 namespaces, {} s of refreshes",
                    a.seconds
                ),
                fmt(got),
            )
        }
        // CPU: oversized keys, 4 callers at once.
        "huge-key" => {
            let key = Arc::new("x".repeat(256 << 10));
            let got = hammer(ch, 4, a.seconds, move |i| {
                let mut m = tiny_cron();
                m.insert(format!("{i}{key}"), "v".into());
                object("cpu", "huge-key", m)
            })
            .await;
            (
                format!("256 KiB unknown keys, 4 callers for {} s", a.seconds),
                fmt(got),
            )
        }
        // 10,000 keys of 100 B (the audit's 1 MB request, past the gRPC decode limit), and as
        // many as fit under that limit: the most decoding a request can still cost.
        "many-keys" | "many-keys-under-limit" => {
            let keys = if kind == "many-keys" { 10_000 } else { 5_000 };
            let got = hammer(ch, 4, a.seconds, move |i| {
                let mut m = tiny_cron();
                for k in 0..keys {
                    m.insert(
                        format!("unknown-key-{i}-{k:05}-{}", "y".repeat(80)),
                        "v".into(),
                    );
                }
                object("cpu", "10k-keys", m)
            })
            .await;
            (
                format!(
                    "{keys} unknown keys of 100 B, 4 callers for {} s",
                    a.seconds
                ),
                fmt(got),
            )
        }
        // CPU: windows on 31 February, 16 per trigger, new text every call.
        "never" => {
            let got = hammer(ch, 4, a.seconds, |i| {
                let ws: Vec<String> = (0..16)
                    .map(|j| {
                        format!(
                            "{} {} 31 2 * -> {} {} 31 2 * = 1",
                            j % 60,
                            i % 24,
                            (j + 1) % 60,
                            i % 24
                        )
                    })
                    .collect();
                object(
                    "cpu",
                    &format!("never-{i}"),
                    md(&[("windows", ws.join(";"))]),
                )
            })
            .await;
            (
                format!("16 windows on 31 February, 4 callers for {} s", a.seconds),
                fmt(got),
            )
        }
        other => panic!("unknown attack {other}"),
    }
}

/// `n` objects, each its own query on one of 16 hostile servers under `/{path}…`: sent once,
/// then `seconds` of their refreshes.
async fn hostile_queries(
    ch: &[Channel],
    upstream: &str,
    path: &str,
    n: usize,
    seconds: u64,
) -> BTreeMap<String, u64> {
    let objs = (0..n)
        .map(|i| {
            object(
                path,
                &format!("{path}-{i}"),
                prom(format!("{upstream}/{path}{}", i % 16), format!("{path}{i}")),
            )
        })
        .collect();
    then_refreshes(ch, objs, seconds).await
}

/// Sends every object once, then leaves their refreshes `seconds` to run.
async fn then_refreshes(
    ch: &[Channel],
    objs: Vec<ScaledObjectRef>,
    seconds: u64,
) -> BTreeMap<String, u64> {
    let got = flood(ch, objs).await;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    got
}
