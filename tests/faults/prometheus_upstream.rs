//! Prometheus faults: a stopped server, 503 with `Retry-After`, a server that never answers.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_stopped_holds_the_value_until_stale_after_and_a_restart_recovers() {
    let mut prom = Prometheus::builder()
        .gauge("http_rps", &[("service", "shop")], 45.0)
        .start()
        .await;
    let s = scaler(Duration::from_secs(1)).await;
    let obj = prometheus_object("web", &prom.url(), "sum(http_rps)");
    first_good_answer(&s, &obj, 5).await;

    prom.stop();
    let fault_at = Instant::now();
    let fresh = prometheus_object("new-web", &prom.url(), "sum(http_rps) * 2");
    tokio::join!(
        first_answer_is_unavailable(&s, &fresh, "prometheus"),
        held_then_unavailable(&s, &obj, fault_at, 5, "prometheus"),
    );

    prom.restart().await;
    poll_until(&s, &obj, Duration::from_secs(5), "recovery", |a| {
        a.value() == Some(5)
    })
    .await;
    poll_until(&s, &fresh, Duration::from_secs(5), "the new query", |a| {
        a.value() == Some(9)
    })
    .await;
    finish(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_503_with_retry_after_is_honoured_and_holds_the_value() {
    let prom = Prometheus::builder().start().await;
    let proxy = Proxy::start(&prom.url(), None).await;
    let s = scaler(Duration::from_secs(1)).await;
    let obj = prometheus_object("web", &proxy.url(), "vector(45)");
    first_good_answer(&s, &obj, 5).await;

    proxy.fail_with(Some((503, Some(2))));
    let fault_at = Instant::now();
    let before = proxy.query_count();
    // Sample the proxy's count to time each query.
    let mut times: Vec<Instant> = Vec::new();
    let mut last = before;
    let seen = {
        let mut seen = Vec::new();
        while Instant::now() < fault_at + STALE + Duration::from_millis(1_500) {
            let n = proxy.query_count();
            if n > last {
                times.extend((last..n).map(|_| Instant::now()));
                last = n;
            }
            let a = poll(&s, &obj).await;
            seen.push(a);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    };
    assert!(
        seen.iter().all(|a| a.value() == Some(5) || a.unavailable()),
        "held or UNAVAILABLE, never 0: {seen:#?}"
    );
    assert!(
        seen.iter()
            .filter(|a| a.at < fault_at + Duration::from_secs(2))
            .all(|a| a.value() == Some(5)),
        "held within staleAfter: {seen:#?}"
    );
    assert!(
        seen.last().unwrap().unavailable(),
        "UNAVAILABLE after staleAfter"
    );
    let spaced = gaps(&times);
    // Each sample is one poll (~20-100 ms) late at most.
    assert!(
        spaced.iter().all(|g| *g >= Duration::from_millis(1_700)),
        "no query sooner than Retry-After: {spaced:?}"
    );
    assert!(
        times.len() <= 3,
        "{} queries in {:?}",
        times.len(),
        fault_at.elapsed()
    );

    proxy.fail_with(None);
    poll_until(&s, &obj, Duration::from_secs(5), "recovery", |a| {
        a.value() == Some(5)
    })
    .await;
    finish(s).await;
}

/// A listener that accepts connections and never answers (a hung server or a black-holing
/// firewall), holding every connection open.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_that_never_answers_is_cut_off_within_the_bound() {
    let (url, task) = black_hole().await;
    let s = scaler(Duration::from_secs(1)).await;

    // The trigger's own `timeout` (ms), shorter than the 2 s bound: the read itself times out.
    let mut short = prometheus_object("short-timeout", &url, "vector(45)");
    short.scaler_metadata.insert("timeout".into(), "700".into());
    // KEDA's default 3 s: the scaler's 2 s bound answers first.
    let default = prometheus_object("default-timeout", &url, "vector(46)");
    // KEDA asks about the short one again at once (its next call): answered from the cache,
    // the timeout remembered rather than waited for again. (Asked only after the other's
    // 2 s wait, seconds after its pace of a call every 0.7 s, it would find its value lapsed
    // and rightly wait for a fresh read.)
    let short_twice = async {
        let first = poll(&s, &short).await;
        let started = Instant::now();
        let again = poll(&s, &short).await;
        (first, again, started.elapsed())
    };
    let ((a, again, took), b) = tokio::join!(short_twice, poll(&s, &default));
    assert!(again.unavailable(), "{again:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    for (a, reason) in [
        (&a, "timed out after 700ms"),
        (&b, "first read has not finished"),
    ] {
        let status = a.metrics.as_ref().expect_err("no value from a hung server");
        assert_eq!(status.code(), Code::Unavailable, "{a:?}");
        assert!(
            status.message().contains(reason),
            "{reason}: {}",
            status.message()
        );
    }
    task.abort();
    finish(s).await;
}
