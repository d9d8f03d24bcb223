//! The parser and client against real recorded Service Bus responses, kept outside the repo
//! in `shared/fixtures/servicebus/` (third-party data). Also checks that the double's
//! responses have exactly the recordings' shape.

#[path = "support/fixtures.rs"]
mod fixtures;

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use blend_scaler::metrics::Metrics;
use blend_scaler::secret::Secret;
use blend_scaler::servicebus::atom::{self, Description, Document, EntityKind};
use blend_scaler::servicebus::auth::{Credential, SharedKeySigner};
use blend_scaler::servicebus::client::{Client, ClientOptions, Connection};
use blend_scaler::signal::SignalError;
use blend_scaler_testkit::servicebus::{ApiVersion, CountsPrefix, ServiceBusDouble};
use fixtures::fixtures;
use quick_xml::NsReader;
use quick_xml::events::Event;

fn read(name: &str) -> String {
    let path = fixtures().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Debug)]
struct Counts {
    name: &'static str,
    kind: EntityKind,
    active: u64,
    dead_letter: u64,
    scheduled: u64,
    message_count: Option<u64>,
}

/// What SOURCES.md says each recording holds.
#[derive(Debug)]
enum Expect {
    Entity(Counts),
    Page(&'static str, Vec<Counts>),
    NotFoundFeed,
    Error(u16, &'static str),
}

fn zero(name: &'static str, kind: EntityKind) -> Counts {
    Counts {
        name,
        kind,
        active: 0,
        dead_letter: 0,
        scheduled: 0,
        message_count: Some(0),
    }
}

fn expectations() -> HashMap<&'static str, Expect> {
    use EntityKind::*;
    use Expect::*;
    let nonzero_queue = || Counts {
        name: "getqueueruntimeinfo33b1f887",
        kind: Queue,
        active: 1,
        dead_letter: 1,
        scheduled: 1,
        message_count: Some(3),
    };
    let nonzero_sub = || Counts {
        name: "65cea5d4",
        kind: Subscription,
        active: 1,
        dead_letter: 1,
        scheduled: 0,
        message_count: Some(2),
    };
    HashMap::from([
        (
            "error-401-invalid-token.xml",
            Error(401, "claim is empty or token is invalid"),
        ),
        (
            "error-404-delete-not-found.xml",
            Error(404, "No service is hosted at the specified address."),
        ),
        (
            "error-404-put-not-found-subcode-40400.xml",
            Error(404, "SubCode=40400"),
        ),
        ("queue-get-not-found-empty-feed.xml", NotFoundFeed),
        (
            "queue-get-runtime-2021-05.xml",
            Entity(zero("test_queue", Queue)),
        ),
        (
            "queue-get-runtime-nonzero-2017-04.xml",
            Entity(nonzero_queue()),
        ),
        ("queues-list-empty-page.xml", Page("Queues", vec![])),
        (
            "queues-list-page-2021-05.xml",
            Page("Queues", vec![zero("test_queue", Queue)]),
        ),
        (
            "queues-list-page-nonzero-2017-04.xml",
            Page("Queues", vec![nonzero_queue()]),
        ),
        (
            "subscription-get-runtime-2021-05.xml",
            Entity(zero("xvazzag", Subscription)),
        ),
        (
            "subscription-get-runtime-nonzero-2017-04.xml",
            Entity(nonzero_sub()),
        ),
        ("subscription-not-found-empty-feed.xml", NotFoundFeed),
        (
            "subscriptions-list-empty-page.xml",
            Page("Subscriptions", vec![]),
        ),
        (
            "subscriptions-list-page-2021-05.xml",
            Page("Subscriptions", vec![zero("cxqplc", Subscription)]),
        ),
        (
            "subscriptions-list-page-nonzero-2017-04.xml",
            Page("Subscriptions", vec![nonzero_sub()]),
        ),
        (
            "topic-get-runtime-2017-04.xml",
            Entity(Counts {
                name: "getsubscriptionruntimeinfotest45d3950f",
                kind: Topic,
                active: 0,
                dead_letter: 0,
                scheduled: 1,
                message_count: None,
            }),
        ),
    ])
}

fn check_counts(file: &str, d: &Description, want: &Counts) {
    assert_eq!(d.name, want.name, "{file}");
    assert_eq!(d.kind, want.kind, "{file}");
    assert_eq!(d.active().unwrap(), want.active, "{file}: active");
    assert_eq!(d.counts.dead_letter, Some(want.dead_letter), "{file}");
    assert_eq!(d.counts.scheduled, Some(want.scheduled), "{file}");
    assert_eq!(d.counts.transfer, Some(0), "{file}");
    assert_eq!(d.counts.transfer_dead_letter, Some(0), "{file}");
    assert_eq!(d.message_count, want.message_count, "{file}: MessageCount");
}

#[test]
fn every_recorded_response_parses_to_the_counts_sources_md_states() {
    let dir = fixtures();
    let expect = expectations();
    let mut seen = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    for path in files {
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        let body = std::fs::read_to_string(&path).unwrap();
        let want = expect
            .get(file.as_str())
            .unwrap_or_else(|| panic!("{file} is new: add what SOURCES.md says it holds"));
        seen += 1;
        match want {
            Expect::Entity(c) => {
                let d = atom::entity_from(&body, "the entity").unwrap();
                check_counts(&file, &d, c);
            }
            Expect::Page(title, entries) => {
                let Document::Feed(feed) = atom::parse(&body).unwrap() else {
                    panic!("{file}: not a feed")
                };
                assert_eq!(feed.title, *title, "{file}");
                assert!(!feed.is_not_found_quirk(), "{file}");
                let page = atom::page_from(&body, "the list").unwrap();
                assert_eq!(page.len(), entries.len(), "{file}");
                for (d, c) in page.iter().zip(entries) {
                    check_counts(&file, d, c);
                }
            }
            Expect::NotFoundFeed => {
                let e = atom::entity_from(&body, "queue `ghost`").unwrap_err();
                assert_eq!(e, SignalError::NotFound("queue `ghost`".into()), "{file}");
                assert_eq!(e.to_string(), "queue `ghost` was not found");
                // Never a zero: the list reader refuses it too.
                assert!(matches!(
                    atom::page_from(&body, "topic `t`"),
                    Err(SignalError::NotFound(_))
                ));
            }
            Expect::Error(status, detail) => {
                let Document::Error(e) = atom::parse(&body).unwrap() else {
                    panic!("{file}: not an <Error>")
                };
                assert_eq!(e.code, status.to_string(), "{file}");
                assert!(e.detail.contains(detail), "{file}: {}", e.detail);
                let err = atom::error_from(*status, &body, "queue `q`");
                match status {
                    401 => {
                        assert!(
                            matches!(err, SignalError::Unauthorized { status: 401, .. }),
                            "{file}: {err:?}"
                        );
                        assert!(err.to_string().contains("authorization failed"), "{err}");
                    }
                    404 => assert_eq!(err, SignalError::NotFound("queue `q`".into())),
                    _ => unreachable!(),
                }
            }
        }
    }
    assert_eq!(
        seen,
        expect.len(),
        "some recordings named in the table are missing"
    );
}

#[test]
fn both_recorded_count_prefixes_are_exercised() {
    // The d3p1 prefix of subscription GETs is the reason children are matched by
    // namespace/local name; make sure the recordings really carry both.
    assert!(read("subscription-get-runtime-2021-05.xml").contains("<d3p1:ActiveMessageCount>"));
    assert!(read("queue-get-runtime-2021-05.xml").contains("<d2p1:ActiveMessageCount>"));
}

/// Serves recordings by path with the status and content type of their exchange.
async fn replay(routes: Vec<(&'static str, u16, &'static str, String)>) -> String {
    let routes = Arc::new(routes);
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let routes = routes.clone();
        async move {
            let path = percent_encoding::percent_decode_str(uri.path())
                .decode_utf8_lossy()
                .to_string();
            match routes.iter().find(|r| r.0.eq_ignore_ascii_case(&path)) {
                Some((_, status, ct, body)) => (
                    StatusCode::from_u16(*status).unwrap(),
                    [(header::CONTENT_TYPE, HeaderValue::from_static(ct))],
                    body.clone(),
                )
                    .into_response(),
                None => Response::builder()
                    .status(500)
                    .body("no route".into())
                    .unwrap(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_client_reads_recorded_exchanges_with_their_status_codes() {
    const ENTRY: &str = "application/atom+xml; type=entry; charset=utf-8";
    const FEED: &str = "application/atom+xml;type=feed;charset=utf-8";
    const ERROR: &str = "application/xml; charset=utf-8";
    let endpoint = replay(vec![
        (
            "/test_queue",
            200,
            ENTRY,
            read("queue-get-runtime-2021-05.xml"),
        ),
        (
            "/getqueueruntimeinfo33b1f887",
            200,
            ENTRY,
            read("queue-get-runtime-nonzero-2017-04.xml"),
        ),
        (
            "/non_existing_queue",
            200,
            FEED,
            read("queue-get-not-found-empty-feed.xml"),
        ),
        (
            "/t/Subscriptions/65cea5d4",
            200,
            ENTRY,
            read("subscription-get-runtime-nonzero-2017-04.xml"),
        ),
        (
            "/NonExistingTopic/Subscriptions/NonExistingPath",
            200,
            FEED,
            read("subscription-not-found-empty-feed.xml"),
        ),
        (
            "/t/Subscriptions",
            200,
            FEED,
            read("subscriptions-list-page-nonzero-2017-04.xml"),
        ),
        (
            "/$Resources/Queues",
            401,
            ERROR,
            read("error-401-invalid-token.xml"),
        ),
        ("/gone", 404, ERROR, read("error-404-delete-not-found.xml")),
    ])
    .await;
    let metrics = Metrics::new();
    let client = Client::new(metrics.clone(), ClientOptions::loopback());
    let conn = Connection::new(
        &endpoint,
        Credential::SharedKey(SharedKeySigner::new("root", Secret::new("k3y-value"))),
    )
    .unwrap();

    assert_eq!(
        client
            .queue(&conn, "test_queue")
            .await
            .unwrap()
            .active()
            .unwrap(),
        0
    );
    let q = client
        .queue(&conn, "getqueueruntimeinfo33b1f887")
        .await
        .unwrap();
    assert_eq!((q.active().unwrap(), q.message_count), (1, Some(3)));
    let e = client.queue(&conn, "non_existing_queue").await.unwrap_err();
    assert!(matches!(e, SignalError::NotFound(_)), "{e:?}");
    assert!(e.to_string().contains("non_existing_queue"), "{e}");

    let s = client.subscription(&conn, "t", "65cea5d4").await.unwrap();
    assert_eq!(s.active().unwrap(), 1);
    let e = client
        .subscription(&conn, "NonExistingTopic", "NonExistingPath")
        .await
        .unwrap_err();
    assert!(matches!(e, SignalError::NotFound(_)), "{e:?}");
    let page = client.subscriptions_page(&conn, "t", 0).await.unwrap();
    assert_eq!(page.len(), 1);

    let e = client.queues_page(&conn, 0).await.unwrap_err();
    assert!(
        matches!(e, SignalError::Unauthorized { status: 401, .. }),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("authorization failed"), "{e}");
    assert!(!e.to_string().contains("k3y-value"));
    let e = client.queue(&conn, "gone").await.unwrap_err();
    assert!(matches!(e, SignalError::NotFound(_)), "{e:?}");

    let text = metrics.encode();
    for (outcome, n) in [("ok", 4), ("not_found", 3), ("unauthorized", 1)] {
        let line = format!(
            "blend_scaler_upstream_requests_total{{upstream=\"servicebus\",outcome=\"{outcome}\"}} {n}"
        );
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
}

/// An XML document reduced to its structure: qualified element names, attribute names and
/// namespace declarations, in order; text and attribute values dropped.
fn shape(xml: &str) -> Vec<String> {
    let mut reader = NsReader::from_str(xml);
    let mut out = Vec::new();
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) | Event::Empty(e) => {
                let mut s = format!("<{}", e.name().0);
                for a in e.attributes() {
                    let a = a.unwrap();
                    s.push(' ');
                    s.push_str(a.key.0);
                    // Namespace URIs are structure; values like ids and links are data.
                    if a.key.0.starts_with("xmlns") || a.key.0 == "type" || a.key.0 == "rel" {
                        s.push('=');
                        s.push_str(&a.value);
                    }
                }
                out.push(s);
            }
            Event::End(e) => out.push(format!("</{}", e.name().0)),
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

async fn raw_get(double: &ServiceBusDouble, path_and_query: &str, token: bool) -> (u16, String) {
    let url = format!("{}{path_and_query}", double.endpoint());
    let resource = url.split('?').next().unwrap().to_string();
    let signer = SharedKeySigner::new(
        double.options().key_name.clone(),
        Secret::new(if token {
            double.options().key.clone()
        } else {
            "wrong".into()
        }),
    );
    let auth = signer.token(&resource, std::time::SystemTime::now());
    let r = reqwest::Client::new()
        .get(&url)
        .header("Authorization", auth.expose())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn the_double_answers_in_exactly_the_recorded_shapes() {
    let double = ServiceBusDouble::start().await.unwrap();
    double.set_queue("test_queue", 4);
    double.set_subscription("topic", "sub", 2);
    let cases: Vec<(&str, Option<ApiVersion>, &str, u16)> = vec![
        (
            "queue-get-runtime-2021-05.xml",
            None,
            "/test_queue?api-version=2021-05",
            200,
        ),
        (
            "queue-get-runtime-nonzero-2017-04.xml",
            None,
            "/test_queue?api-version=2017-04",
            200,
        ),
        (
            "queues-list-page-2021-05.xml",
            None,
            "/$Resources/queues?$skip=0&$top=100&api-version=2021-05",
            200,
        ),
        (
            "queues-list-page-nonzero-2017-04.xml",
            Some(ApiVersion::V2017_04),
            "/$Resources/queues?$skip=0&$top=100&api-version=2017-04",
            200,
        ),
        (
            "subscription-get-runtime-2021-05.xml",
            None,
            "/topic/subscriptions/sub?api-version=2021-05",
            200,
        ),
        (
            "subscription-get-runtime-nonzero-2017-04.xml",
            None,
            "/topic/Subscriptions/sub?api-version=2017-04",
            200,
        ),
        (
            "subscriptions-list-page-2021-05.xml",
            None,
            "/topic/subscriptions?$skip=0&$top=100&api-version=2021-05",
            200,
        ),
        (
            "subscriptions-list-page-nonzero-2017-04.xml",
            None,
            "/topic/Subscriptions?$skip=0&$top=100&api-version=2017-04",
            200,
        ),
        (
            "topic-get-runtime-2017-04.xml",
            None,
            "/topic?api-version=2017-04",
            200,
        ),
        (
            "queue-get-not-found-empty-feed.xml",
            None,
            "/non_existing_queue?api-version=2021-05",
            200,
        ),
        (
            "subscription-not-found-empty-feed.xml",
            None,
            "/NonExistingTopic/Subscriptions/NonExistingPath?api-version=2021-05",
            200,
        ),
        (
            "queues-list-empty-page.xml",
            None,
            "/$Resources/queues?$skip=100&$top=100&api-version=2021-05",
            200,
        ),
    ];
    for (file, version, path, status) in cases {
        double.set_api_version(version);
        let (got_status, body) = raw_get(&double, path, true).await;
        assert_eq!(got_status, status, "{file}");
        assert_eq!(shape(&body), shape(&read(file)), "{file}\n{body}");
    }
    double.set_api_version(None);
    let (status, body) = raw_get(&double, "/$Resources/queues?api-version=2021-05", false).await;
    assert_eq!(status, 401);
    assert_eq!(shape(&body), shape(&read("error-401-invalid-token.xml")));
    // The prefix can be forced either way.
    double.set_counts_prefix(CountsPrefix::D3p1);
    let (_, body) = raw_get(&double, "/test_queue?api-version=2021-05", true).await;
    assert!(body.contains("<d3p1:ActiveMessageCount>4<"), "{body}");
    double.set_counts_prefix(CountsPrefix::D2p1);
    let (_, body) = raw_get(
        &double,
        "/topic/Subscriptions/sub?api-version=2021-05",
        true,
    )
    .await;
    assert!(body.contains("<d2p1:ActiveMessageCount>2<"), "{body}");
}
