//! Critical path of the redirect: every dependency (DynamoDB, Secrets Manager, KMS through a
//! delaying proxy in front of moto; the token endpoint and Graph at the stand-in) answers
//! after the same added latency, and the redirect's total time is reported as a number of
//! sequential hops. The design's floor is 4: consume state → token → (Graph ∥ Graph ∥ KMS)
//! → save. Usage: critical-path [LATENCY_MS] [aws|microsoft] [--autokitteh] [--json FILE].
//!
//! With `--autokitteh` the flow runs inside a stand-in AutoKitteh, whose calls get the same
//! latency: WhoAmI runs alongside the consume and `VarsService/Set` alongside the save, so
//! the floor stays 4.

#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use ms_oauth::autokitteh::{Integration, LOGGED_IN_COOKIE, SESSION_COOKIE};
use ms_oauth::config;
use ms_oauth::domain::Origin;
use ms_oauth::wiring::Overrides;
use ms_oauth_tests::autokitteh::{AkFault, AkStandin, CONNECTIONS_GET, VARS_SET, WHO_AM_I};
use ms_oauth_tests::local;
use ms_oauth_tests::standin::{Fault, Registration, Standin};
use ms_oauth_tests::{aws, deploy};
use tokio::net::TcpListener;

const CLIENT_ID: &str = "3f2b7c8e-1d4a-4b6f-9e0c-5a7d8b9c0e1f";
const START_KEY: &str = "critical-path-start-link-key-0123456789abcdef";

#[derive(Clone)]
struct Proxy {
    upstream: String,
    delay_ms: Arc<AtomicU64>,
    http: reqwest::Client,
}

/// Forwards every request to moto after `delay`.
async fn forward(State(p): State<Proxy>, req: Request) -> Response {
    tokio::time::sleep(Duration::from_millis(p.delay_ms.load(Ordering::Relaxed))).await;
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let url = format!("{}{}", p.upstream, parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    let mut out = p.http.request(parts.method, url).body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            out = out.header(name, value);
        }
    }
    match out.send().await {
        Ok(r) => {
            let status = r.status();
            let headers = r.headers().clone();
            let bytes = r.bytes().await.unwrap_or_default();
            let mut response = (status, bytes).into_response();
            for (name, value) in &headers {
                if name != "content-length" && name != "transfer-encoding" {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            response
        }
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = match args.iter().position(|a| a == "--json") {
        Some(i) if i + 1 < args.len() => Some(args.drain(i..=i + 1).nth(1).unwrap_or_default()),
        _ => None,
    };
    let autokitteh_mode = match args.iter().position(|a| a == "--autokitteh") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let latency_ms: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(50);
    let delay = Duration::from_millis(latency_ms);
    // Optional: delay only AWS (`aws`) or only Microsoft (`microsoft`), to locate a hop.
    let only = args.get(1).cloned().unwrap_or_default();
    let aws_delay = if only == "microsoft" { Duration::ZERO } else { delay };
    let ms_delay = if only == "aws" { Duration::ZERO } else { delay };
    let moto = aws::spawn_moto(aws::free_port().unwrap()).expect("moto");
    let setup = aws::sdk_config(&moto).await;
    let resources = deploy::Resources::make(&setup, "critical-path", START_KEY).await.unwrap();
    let secret = "critical-path-client-secret";
    let secret_arn = aws::ensure_secret(
        &aws_sdk_secretsmanager::Client::new(&setup),
        "critical-path/cs",
        secret,
    )
    .await
    .unwrap();

    let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy_listener.local_addr().unwrap());
    let aws_delay_ms = Arc::new(AtomicU64::new(0));
    let proxy = Router::new().fallback(forward).with_state(Proxy {
        upstream: moto.clone(),
        delay_ms: aws_delay_ms.clone(),
        http: reqwest::Client::new(),
    });
    tokio::spawn(async move { axum::serve(proxy_listener, proxy).await });
    let sdk = aws::sdk_config(&proxy_url).await;

    let app_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", app_listener.local_addr().unwrap());
    let standin = Standin::spawn(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Registration {
            client_id: CLIENT_ID.into(),
            client_secret: secret.into(),
            redirect_uri: format!("{address}{}", config::REDIRECT_PATH),
        },
    )
    .unwrap();
    let mut parameters = BTreeMap::from([
        ("MicrosoftClientId".to_owned(), CLIENT_ID.to_owned()),
        ("MicrosoftClientSecretArn".to_owned(), secret_arn),
        ("MicrosoftAuthorityHost".to_owned(), standin.url()),
        ("MicrosoftGraphUrl".to_owned(), standin.url()),
    ]);
    // Inside AutoKitteh: one org and user; each flow gets a connection of its own.
    let autokitteh = if autokitteh_mode {
        let ak = AkStandin::spawn(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        parameters.insert("AutoKittehApiUrl".into(), ak.url());
        let org = ak.add_org("Critical path");
        let user = ak.add_user("bench@autokitteh.example", &[&org]);
        Some(AkRun { session: ak.session_for(&user), ak, org })
    } else {
        None
    };
    // The functions as the template deploys them (events and audit included).
    let deployment = deploy::deployment("critical-path", parameters, &resources);
    let environments = deploy::environments(&deployment, &address);
    let built =
        deploy::build(&|id| &environments[id], &|_| &sdk, &|_| Overrides::default()).unwrap();
    tokio::spawn(local::serve(app_listener, built.served().0));
    let set_delays = |aws: Duration, microsoft: Duration| {
        aws_delay_ms.store(u64::try_from(aws.as_millis()).unwrap_or(0), Ordering::Relaxed);
        let fault = Some(Fault::Delay(microsoft));
        standin.set_token_fault(fault.clone());
        standin.set_me_fault(fault.clone());
        standin.set_organization_fault(fault);
        if let Some(run) = &autokitteh {
            for method in [WHO_AM_I, CONNECTIONS_GET, VARS_SET] {
                run.ak.set_fault(method, Some(AkFault::Delay(microsoft)));
            }
        }
    };

    let http =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    // The first flow runs on a cold instance: the client secret is read from Secrets Manager
    // (alongside the state consume). Then a baseline without added latency, then the runs.
    let mode = if autokitteh.is_some() { " inside AutoKitteh" } else { "" };
    println!(
        "Critical path of the redirect{mode}, each dependency delayed by {latency_ms} ms (moto, stand-ins, loopback):"
    );
    // Order: a cold instance first (the client secret is read from Secrets Manager, alongside
    // the state consume), then runs without added latency (our code and the emulators), then
    // warm runs with latency. Hops = (time − fastest baseline) / latency.
    set_delays(aws_delay, ms_delay);
    let cold = flow(&http, &address, autokitteh.as_ref()).await;
    set_delays(Duration::ZERO, Duration::ZERO);
    let mut baseline = Vec::new();
    for _ in 0..5 {
        baseline.push(flow(&http, &address, autokitteh.as_ref()).await);
    }
    set_delays(aws_delay, ms_delay);
    let mut warm = Vec::new();
    for _ in 0..5 {
        warm.push(flow(&http, &address, autokitteh.as_ref()).await);
    }
    warm.sort();
    let base = baseline.iter().min().copied().unwrap_or(Duration::ZERO);
    let hops = |t: Duration| t.saturating_sub(base).as_secs_f64() / delay.as_secs_f64();
    let ms = |t: Duration| t.as_secs_f64() * 1000.0;
    println!("  baseline (no added latency, fastest of 5)   {:7.1} ms", ms(base));
    if let Some(path) = json {
        let warm_median = warm[warm.len() / 2];
        let report = serde_json::json!({
            "latency_ms": latency_ms,
            "baseline_ms": ms(base),
            "cold_ms": ms(cold),
            "cold_hops": hops(cold),
            "warm_ms": ms(warm_median),
            "warm_hops": hops(warm_median),
            "floor": 4,
            "autokitteh": autokitteh.is_some(),
        });
        std::fs::write(&path, report.to_string()).expect("write the JSON report");
    }
    for (label, t) in
        [("cold instance", cold), ("warm instance (median of 5)", warm[warm.len() / 2])]
    {
        println!(
            "  {label:<42} {:7.1} ms → {:.2} × {latency_ms} ms → {} sequential hops (design floor: 4)",
            ms(t),
            hops(t),
            hops(t).round()
        );
    }
}

/// The stand-in AutoKitteh of a run inside AutoKitteh, its org and its user's session.
struct AkRun {
    ak: AkStandin,
    org: String,
    session: String,
}

/// One full flow; returns how long the redirect request took.
async fn flow(http: &reqwest::Client, address: &str, autokitteh: Option<&AkRun>) -> Duration {
    let (start, session_cookie) = match autokitteh {
        // AutoKitteh's own start URL, with the user's session cookies.
        Some(run) => {
            let cid = run.ak.add_connection(&run.org, Integration::Microsoft, "bench");
            let cookies = format!("{SESSION_COOKIE}={}; {LOGGED_IN_COOKIE}=true", run.session);
            let url = format!("{address}{}?cid={cid}&origin=web", config::START_PATH);
            // As AutoKitteh's popup navigates: from its own site, so no confirmation.
            let start = http
                .get(url)
                .header("cookie", &cookies)
                .header("sec-fetch-site", "same-site")
                .send()
                .await
                .unwrap();
            (start, Some(cookies))
        }
        None => {
            let cid = ms_oauth_tests::new_connection_id();
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let grant = ms_oauth_tests::startlink::grant(&cid, Origin::Web, 300);
            let link =
                ms_oauth_tests::startlink::start_link(address, START_KEY, &grant, now).unwrap();
            (ms_oauth_tests::startlink::open_and_confirm(http, &link).await.unwrap(), None)
        }
    };
    assert_eq!(start.status(), 302, "the start goes to Microsoft");
    let mut cookie = ms_oauth_tests::startlink::binding_cookie(start.headers()).unwrap();
    if let Some(session) = session_cookie {
        cookie = format!("{cookie}; {session}");
    }
    let authorize = url::Url::parse(start.headers()["location"].to_str().unwrap()).unwrap();
    let mut form: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    form.push(("account".into(), "work".into()));
    let post = format!("{}{}", authorize.origin().ascii_serialization(), authorize.path());
    let decision = http.post(post).form(&form).send().await.unwrap();
    let callback = decision.headers()["location"].to_str().unwrap().to_owned();

    let started = Instant::now();
    let finish = http.get(&callback).header("cookie", cookie).send().await.unwrap();
    let elapsed = started.elapsed();
    // Standalone: the success page; inside AutoKitteh: a 302 to AutoKitteh's success page.
    let expected = if autokitteh.is_some() { 302 } else { 200 };
    assert_eq!(finish.status(), expected, "{}", finish.text().await.unwrap_or_default());
    elapsed
}
