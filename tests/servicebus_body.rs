//! A list page's body as Service Bus sends it (`Transfer-Encoding: chunked`, in pieces, no
//! `Content-Length`) reads as recorded; a body past the cap, a declared length past it and a
//! connection cut mid-body each fail as what they are, never as a short page.

#[path = "support/fixtures.rs"]
mod fixtures;

use std::time::Duration;

use blend_scaler::metrics::Metrics;
use blend_scaler::secret::Secret;
use blend_scaler::servicebus::auth::{Credential, SharedKeySigner};
use blend_scaler::servicebus::client::{Client, ClientOptions, Connection};
use blend_scaler::signal::SignalError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the one-connection server writes its answer.
enum Answer {
    /// HTTP 200, chunked, the body in chunks of `piece` bytes (hyper hands each chunk on as
    /// its own piece of body, however TCP packs them).
    Chunked { body: Vec<u8>, piece: usize },
    /// HTTP 200, chunked, then the connection closed after `sent` bytes of the body.
    CutAfter { body: Vec<u8>, sent: usize },
    /// HTTP 200 declaring a `Content-Length` and sending nothing.
    Declared(u64),
}

/// Serves one request on a loopback port with `answer`; the endpoint to connect to.
async fn serve_once(answer: Answer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if socket.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let feed = "Content-Type: application/atom+xml; type=feed; charset=utf-8\r\n";
        let chunked = format!("HTTP/1.1 200 OK\r\n{feed}Transfer-Encoding: chunked\r\n\r\n");
        match answer {
            Answer::Declared(n) => {
                let head = format!("HTTP/1.1 200 OK\r\n{feed}Content-Length: {n}\r\n\r\n");
                socket.write_all(head.as_bytes()).await.unwrap();
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Answer::Chunked { body, piece } => {
                socket.write_all(chunked.as_bytes()).await.unwrap();
                for part in body.chunks(piece) {
                    let size = format!("{:x}\r\n", part.len());
                    socket.write_all(size.as_bytes()).await.unwrap();
                    socket.write_all(part).await.unwrap();
                    socket.write_all(b"\r\n").await.unwrap();
                    socket.flush().await.unwrap();
                }
                socket.write_all(b"0\r\n\r\n").await.unwrap();
            }
            Answer::CutAfter { body, sent } => {
                socket.write_all(chunked.as_bytes()).await.unwrap();
                let size = format!("{:x}\r\n", body.len());
                socket.write_all(size.as_bytes()).await.unwrap();
                socket.write_all(&body[..sent]).await.unwrap();
                socket.flush().await.unwrap();
                // Dropped here: the connection closes mid-chunk.
            }
        }
    });
    format!("http://{addr}")
}

fn connection(endpoint: &str) -> Connection {
    let signer = SharedKeySigner::new("RootManageSharedAccessKey", Secret::new("a2V5"));
    Connection::new(endpoint, Credential::SharedKey(signer)).unwrap()
}

fn client(max_body_bytes: usize) -> Client {
    let options = ClientOptions {
        max_body_bytes,
        ..ClientOptions::loopback()
    };
    Client::new(Metrics::new(), options)
}

fn recorded_page() -> Vec<u8> {
    std::fs::read(fixtures::fixtures().join("queues-list-page-nonzero-2017-04.xml")).unwrap()
}

#[tokio::test]
async fn a_recorded_page_sent_in_small_chunks_reads_as_recorded() {
    for piece in [1, 7, 100] {
        let endpoint = serve_once(Answer::Chunked {
            body: recorded_page(),
            piece,
        })
        .await;
        let page = client(1 << 20)
            .queues_page(&connection(&endpoint), 0)
            .await
            .unwrap();
        assert_eq!(page.len(), 1, "pieces of {piece}");
        assert_eq!(page[0].active().unwrap(), 1);
        assert_eq!(page[0].counts.dead_letter, Some(1));
        assert_eq!(page[0].message_count, Some(3));
    }
}

#[tokio::test]
async fn a_body_past_the_cap_fails_while_it_arrives() {
    let body = recorded_page();
    let cap = body.len() / 2;
    let endpoint = serve_once(Answer::Chunked { body, piece: 64 }).await;
    let err = client(cap)
        .queues_page(&connection(&endpoint), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SignalError::TooLarge { limit } if limit == cap),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_declared_length_past_the_cap_fails_before_the_body_comes() {
    let endpoint = serve_once(Answer::Declared(10 << 20)).await;
    let started = tokio::time::Instant::now();
    let err = client(1 << 20)
        .queues_page(&connection(&endpoint), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SignalError::TooLarge { limit } if limit == 1 << 20),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "not waiting for the body"
    );
}

#[tokio::test]
async fn a_connection_cut_mid_body_is_a_malformed_answer_not_a_short_page() {
    let body = recorded_page();
    let sent = body.len() * 2 / 3;
    let endpoint = serve_once(Answer::CutAfter { body, sent }).await;
    let err = client(1 << 20)
        .queues_page(&connection(&endpoint), 0)
        .await
        .unwrap_err();
    let SignalError::Malformed(message) = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("was cut off after"), "{message}");
    assert!(
        message.contains("127.0.0.1"),
        "names the namespace: {message}"
    );
}
