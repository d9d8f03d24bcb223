//! The gRPC listener's HTTP/2 and connection limits (docs/security.md, "Transport limits"), driven over the wire:
//! raw HTTP/2 frames where a well-behaved client library would refuse to misbehave, the `h2`
//! crate for the Rapid Reset pattern, and KEDA's own calls for the gRPC-level limits.

#[path = "support/keda.rs"]
mod keda;

use std::time::{Duration, Instant};

use blend_scaler::proto::ScaledObjectRef;
use blend_scaler::server::{self, Running, ServerConfig};
use blend_scaler::transport::TransportLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::Code;

const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

async fn scaler(transport: TransportLimits) -> Running {
    let mut config = ServerConfig::loopback();
    config.http_addr = None;
    config.transport = transport;
    // The black-hole Prometheus below listens on loopback.
    config.engine.hosts.allow_loopback = true;
    server::start_with_default_sources(config).await.unwrap()
}

/// What the server sent on a raw connection.
#[derive(Debug)]
enum Frame {
    Settings(Vec<(u16, u32)>),
    Reset { stream: u32, code: u32 },
    GoAway { code: u32 },
    Closed,
}

/// An HTTP/2 connection spoken frame by frame; a task reads and reports the server's frames.
struct RawH2 {
    write: tokio::net::tcp::OwnedWriteHalf,
    frames: mpsc::UnboundedReceiver<Frame>,
    next_stream: u32,
    /// The server's first SETTINGS.
    settings: Vec<(u16, u32)>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A header block of literal fields without indexing, so no HPACK state is needed.
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        out.push(name.len() as u8);
        out.extend(name.as_bytes());
        out.push(value.len() as u8);
        out.extend(value.as_bytes());
    }
    out
}

fn is_active_headers(authority: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "POST".into()),
        (":scheme", "http".into()),
        (":path", "/externalscaler.ExternalScaler/IsActive".into()),
        (":authority", authority.into()),
        ("content-type", "application/grpc".into()),
        ("te", "trailers".into()),
    ]
}

impl RawH2 {
    async fn connect(running: &Running) -> Self {
        let tcp = TcpStream::connect(running.grpc_addr).await.unwrap();
        let (mut read, mut write) = tcp.into_split();
        write
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        write.write_all(&frame(4, 0, 0, &[])).await.unwrap();
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            loop {
                let n = match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Frame::Closed);
                        return;
                    }
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while buf.len() >= 9 {
                    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                    if buf.len() < 9 + len {
                        break;
                    }
                    let (kind, flags) = (buf[3], buf[4]);
                    let stream = u32::from_be_bytes(buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
                    let payload = buf[9..9 + len].to_vec();
                    buf.drain(..9 + len);
                    let u32_at =
                        |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().unwrap());
                    let event = match kind {
                        4 if flags & 1 == 0 => Frame::Settings(
                            payload
                                .chunks_exact(6)
                                .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32_at_chunk(c)))
                                .collect(),
                        ),
                        3 => Frame::Reset {
                            stream,
                            code: u32_at(0),
                        },
                        7 => Frame::GoAway { code: u32_at(4) },
                        _ => continue,
                    };
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
        let mut raw = Self {
            write,
            frames,
            next_stream: 1,
            settings: Vec::new(),
        };
        raw.settings = raw.settings().await;
        // Acknowledge the server's SETTINGS, as a client must before relying on them.
        raw.write.write_all(&frame(4, 1, 0, &[])).await.unwrap();
        raw
    }

    async fn settings(&mut self) -> Vec<(u16, u32)> {
        loop {
            match self.next().await {
                Frame::Settings(s) => return s,
                Frame::Closed => panic!("closed before SETTINGS"),
                _ => {}
            }
        }
    }

    async fn next(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(10), self.frames.recv())
            .await
            .expect("a frame from the server within 10 s")
            .unwrap_or(Frame::Closed)
    }

    /// Opens a stream with HEADERS; `extra` fields are appended, `end_stream` closes our side.
    async fn open(&mut self, authority: &str, extra: &[(&str, &str)], end_stream: bool) -> u32 {
        let mut fields: Vec<(&str, &str)> = Vec::new();
        let owned = is_active_headers(authority);
        fields.extend(owned.iter().map(|(k, v)| (*k, v.as_str())));
        fields.extend(extra);
        let id = self.next_stream;
        self.next_stream += 2;
        let flags = 0x4 | if end_stream { 0x1 } else { 0 };
        // A write error means the server closed the connection; the reader reports why.
        let _ = self
            .write
            .write_all(&frame(1, flags, id, &header_block(&fields)))
            .await;
        id
    }
}

fn u32_at_chunk(c: &[u8]) -> u32 {
    u32::from_be_bytes([c[2], c[3], c[4], c[5]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_streams_the_server_must_reset_ends_in_goaway_enhance_your_calm() {
    // MadeYouReset (CVE-2025-8671): each HEADERS carries a connection-specific header, so the
    // server itself resets the stream. tonic switches h2's bound on that off; `serve` sets it.
    let running = scaler(TransportLimits::default()).await;
    let mut raw = RawH2::connect(&running).await;
    let authority = running.grpc_addr.to_string();
    let limit = TransportLimits::default().http2_max_local_error_reset_streams;
    for _ in 0..limit + 200 {
        raw.open(&authority, &[("connection", "close")], true).await;
    }
    let (mut resets, mut goaway) = (0, None);
    while goaway.is_none() {
        match raw.next().await {
            Frame::Reset { .. } => resets += 1,
            Frame::GoAway { code } => goaway = Some(code),
            Frame::Closed => break,
            Frame::Settings(_) => {}
        }
    }
    assert_eq!(
        goaway,
        Some(ENHANCE_YOUR_CALM),
        "GOAWAY(ENHANCE_YOUR_CALM) after {resets} resets"
    );
    assert!(resets <= limit + 1, "{resets} resets before GOAWAY");
    // The server is still there for everyone else.
    let mut client = keda::connect(&running).await;
    let cron = cron_object("after-storm");
    assert!(client.is_active(cron).await.is_ok());
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_storm_ends_in_goaway_enhance_your_calm() {
    // Rapid Reset (CVE-2023-44487): HEADERS then RST_STREAM, many per write, so the server
    // sees streams cancelled before it could accept them.
    let running = scaler(TransportLimits::default()).await;
    let mut raw = RawH2::connect(&running).await;
    let authority = running.grpc_addr.to_string();
    let (mut sent, mut goaway) = (0, None);
    'storm: for _ in 0..100 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            let id = raw.next_stream;
            raw.next_stream += 2;
            let fields = is_active_headers(&authority);
            let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            batch.extend(frame(1, 0x4, id, &header_block(&fields)));
            batch.extend(frame(3, 0, id, &0x8u32.to_be_bytes()));
        }
        if raw.write.write_all(&batch).await.is_err() {
            break;
        }
        sent += 100;
        while let Ok(event) = raw.frames.try_recv() {
            if let Frame::GoAway { code } = event {
                goaway = Some(code);
                break 'storm;
            }
        }
    }
    while goaway.is_none() {
        match raw.next().await {
            Frame::GoAway { code } => goaway = Some(code),
            Frame::Closed => break,
            _ => {}
        }
    }
    assert_eq!(
        goaway,
        Some(ENHANCE_YOUR_CALM),
        "GOAWAY(ENHANCE_YOUR_CALM) after {sent} cancelled streams"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_per_connection_cap_are_refused() {
    let running = scaler(TransportLimits {
        max_concurrent_streams: 8,
        ..TransportLimits::default()
    })
    .await;
    let mut raw = RawH2::connect(&running).await;
    assert!(
        raw.settings.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 8)),
        "SETTINGS {:?}",
        raw.settings
    );

    let authority = running.grpc_addr.to_string();
    // Open streams (no request body yet), each held by the server waiting for it.
    let mut opened = Vec::new();
    for _ in 0..9 {
        opened.push(raw.open(&authority, &[], false).await);
    }
    let refused = loop {
        match raw.next().await {
            Frame::Reset { stream, code } => break (stream, code),
            Frame::Closed => panic!("connection closed instead of refusing one stream"),
            _ => {}
        }
    };
    assert_eq!(refused, (opened[8], REFUSED_STREAM));
    // Graceful shutdown would wait for the streams this client holds open.
    drop(raw);
    running.shutdown().await.unwrap();
}

fn cron_object(name: &str) -> ScaledObjectRef {
    keda::object(
        "production",
        name,
        keda::metadata([
            ("start", "0 8 * * *"),
            ("end", "0 20 * * *"),
            ("desiredReplicas", "2"),
        ]),
    )
}

/// A listener that accepts connections and never answers, holding each open.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    url
}

fn hung_prometheus_object(name: &str, server: &str) -> ScaledObjectRef {
    keda::object(
        "production",
        name,
        keda::metadata([
            ("serverAddress", server),
            ("query", "vector(1)"),
            ("threshold", "1"),
        ]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_per_connection_concurrency_limit_are_shed_with_resource_exhausted() {
    let running = scaler(TransportLimits {
        max_concurrent_requests: 1,
        ..TransportLimits::default()
    })
    .await;
    let hung = black_hole().await;
    let client = keda::connect(&running).await;
    // The first call waits for a first read that never comes (up to the 2 s bound).
    let mut first_client = client.clone();
    let first = tokio::spawn(async move {
        first_client
            .is_active(hung_prometheus_object("slow", &hung))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let shed = client
        .clone()
        .is_active(cron_object("queued-behind"))
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "shed at once, not queued: {:?}",
        started.elapsed()
    );
    let first = first.await.unwrap().unwrap_err();
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    // With the slot free again, the same connection is served.
    assert!(client.clone().is_active(cron_object("after")).await.is_ok());
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_outlasts_the_request_timeout_is_ended_by_the_server() {
    let running = scaler(TransportLimits {
        request_timeout: Duration::from_millis(300),
        ..TransportLimits::default()
    })
    .await;
    let hung = black_hole().await;
    let mut client = keda::connect(&running).await;
    let started = Instant::now();
    let status = client
        .is_active(hung_prometheus_object("slow", &hung))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "ended by the 300 ms timeout, not the 2 s first-read bound: {took:?}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_and_a_freed_slot_is_reused() {
    let running = scaler(TransportLimits {
        max_connections: 2,
        ..TransportLimits::default()
    })
    .await;
    let first = RawH2::connect(&running).await;
    let second = RawH2::connect(&running).await;

    let mut third = TcpStream::connect(running.grpc_addr).await.unwrap();
    let _ = third.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("the server closes the third connection");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the third connection got data: {read:?}"
    );

    drop(first);
    // The server notices the close and frees the slot.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut client = match tokio::time::timeout(
            Duration::from_secs(1),
            tonic::transport::Channel::from_shared(format!("http://{}", running.grpc_addr))
                .unwrap()
                .connect(),
        )
        .await
        {
            Ok(Ok(channel)) => {
                blend_scaler::proto::external_scaler_client::ExternalScalerClient::new(channel)
            }
            _ => {
                assert!(Instant::now() < deadline, "no slot freed within 5 s");
                continue;
            }
        };
        match client.is_active(cron_object("third")).await {
            Ok(_) => break,
            Err(_) => assert!(Instant::now() < deadline, "no slot freed within 5 s"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((second, third));
    running.shutdown().await.unwrap();
}
