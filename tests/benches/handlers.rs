//! CPU cost per request of the start and redirect handlers, with every dependency answered
//! in-process: the table in memory, KMS by a local key wrapper, the secrets as values, and
//! the token endpoint and Graph by a transport that returns canned responses without a
//! socket. What is timed is therefore our own work per request: query and cookie parsing,
//! grant verification, CSPRNG, PKCE, the `oauth2` request building and response parsing,
//! id_token decoding, AES-GCM sealing and page rendering.
//!
//! `cargo bench -p ms-oauth-tests --bench handlers` (or `make bench`). Each request runs on a
//! single-threaded runtime with nothing to wait for, so wall time is CPU time.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use lambda_http::Request;
use ms_oauth::clock::SystemClock;
use ms_oauth::config::{self, Config, SecretSource};
use ms_oauth::crypto::{FakeDataKeys, MemoryKeyShares};
use ms_oauth::domain::Origin;
use ms_oauth::grant::{GrantKey, StartGrant};
use ms_oauth::http::{HttpError, Transport};
use ms_oauth::microsoft::{Endpoints, Microsoft};
use ms_oauth::secrets::CachedSecret;
use ms_oauth::state::{StateKey, browser_hash};
use ms_oauth::store::{MemoryStore, PendingFlow, Store};
use oauth_redirect::RedirectService;
use oauth_start::StartService;
use secrecy::SecretString;
use serde_json::json;

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const START_KEY: &str = "0123456789abcdef0123456789abcdef";
const CID: &str = "con_01h9x3k6rtv2d9yb3pfcw6qz7m";
const TENANT: &str = "2f6a3d1c-5b4e-4c8a-9f17-0a1b2c3d4e5f";

fn config() -> Config {
    let vars = [
        (config::WEBHOOK_ADDRESS, "api.example.com"),
        (config::MICROSOFT_CLIENT_ID, CLIENT_ID),
        (config::MICROSOFT_TENANT_ID, "organizations"),
        (config::OAUTH_TABLE_NAME, "autokitteh-oauth"),
    ];
    Config::from_lookup(&|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()))
        .unwrap()
}

fn value(secret: &str) -> CachedSecret {
    CachedSecret::new(SecretSource::Value(secret.to_owned().into()), None)
}

/// Answers like the token endpoint and Graph, with responses of realistic size.
#[derive(Debug)]
struct CannedMicrosoft {
    token: Vec<u8>,
    me: Vec<u8>,
    organization: Vec<u8>,
}

impl CannedMicrosoft {
    fn new() -> Self {
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let id_token = format!(
            "{}.{}.{}",
            b64(json!({"typ": "JWT", "alg": "RS256", "kid": "bench"})),
            b64(json!({
                "aud": CLIENT_ID, "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
                "iat": 1_795_804_200, "nbf": 1_795_804_200, "exp": 1_795_808_100,
                "name": "Adele Vance", "oid": "6f1d2c3b-4a59-4e68-8f70-91a2b3c4d5e6",
                "preferred_username": "adele.vance@contoso.example", "tid": TENANT, "ver": "2.0",
            })),
            "s".repeat(342)
        );
        let token = json!({
            "token_type": "Bearer",
            "scope": config::DEFAULT_SCOPES,
            "expires_in": 4437,
            "ext_expires_in": 4437,
            "access_token": format!("eyJ0eXAiOiJKV1Qi.{}", "a".repeat(1900)),
            "refresh_token": format!("1.AXEA{}", "r".repeat(1100)),
            "id_token": id_token,
        });
        let me = json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
            "businessPhones": [], "displayName": "Adele Vance", "givenName": "Adele",
            "jobTitle": null, "mail": "adele.vance@contoso.example", "mobilePhone": null,
            "officeLocation": null, "preferredLanguage": "en-US", "surname": "Vance",
            "userPrincipalName": "adele.vance@contoso.example",
            "id": "6f1d2c3b-4a59-4e68-8f70-91a2b3c4d5e6",
        });
        let organization = json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#organization",
            "value": [{"id": TENANT, "displayName": "Contoso", "tenantType": "AAD"}],
        });
        Self {
            token: token.to_string().into_bytes(),
            me: me.to_string().into_bytes(),
            organization: organization.to_string().into_bytes(),
        }
    }
}

#[async_trait]
impl Transport for CannedMicrosoft {
    async fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, HttpError> {
        let path = request.uri().path();
        let body = if path.ends_with("/oauth2/v2.0/token") {
            &self.token
        } else if path.ends_with("/v1.0/me") {
            &self.me
        } else if path.ends_with("/v1.0/organization") {
            &self.organization
        } else {
            return Ok(http::Response::builder().status(404).body(Vec::new()).unwrap());
        };
        Ok(http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.clone())
            .unwrap())
    }
}

fn start_service() -> StartService {
    let config = config();
    let endpoints = Endpoints::new(&config);
    StartService::new(
        config,
        endpoints,
        Arc::new(MemoryStore::default()),
        Arc::new(SystemClock),
        value(START_KEY),
    )
}

fn redirect_service(store: Arc<MemoryStore>) -> RedirectService {
    let config = config();
    let microsoft =
        Microsoft::with_transport(Endpoints::new(&config), Arc::new(CannedMicrosoft::new()));
    RedirectService::new(
        config,
        microsoft,
        store,
        Arc::new(FakeDataKeys),
        Arc::new(MemoryKeyShares::default()),
        Arc::new(SystemClock),
        value("bench-client-secret"),
    )
}

/// An API Gateway HTTP API (payload 2.0) event, as Lambda hands it to the runtime.
fn event(path: &str, query: &[(&str, &str)], cookie: Option<String>) -> String {
    let raw_query = serde_urlencoded::to_string(query).unwrap();
    let params: serde_json::Map<String, serde_json::Value> =
        query.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    let mut event = json!({
        "version": "2.0",
        "routeKey": format!("GET {path}"),
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": {
            "accept": "text/html,application/xhtml+xml",
            "host": "api.example.com",
            "user-agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0",
            "x-forwarded-proto": "https",
        },
        "queryStringParameters": params,
        "requestContext": {
            "accountId": "123456789012", "apiId": "abcdef1234", "domainName": "api.example.com",
            "domainPrefix": "api",
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "Mozilla/5.0"},
            "requestId": "JKJaXmPLvHcESHA=", "routeKey": format!("GET {path}"),
            "stage": "$default", "time": "27/Nov/2026:18:30:00 +0000", "timeEpoch": 1_795_804_200_000u64,
        },
        "isBase64Encoded": false,
    });
    if let Some(cookie) = cookie {
        event["cookies"] = json!([cookie]);
    }
    event.to_string()
}

/// A start link's event with a grant of its own (grants open once), valid for the whole run.
fn start_event() -> String {
    let key = GrantKey::new(START_KEY.to_owned().into()).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let grant = StartGrant {
        lifetime_secs: 600,
        ..StartGrant::new(CID.parse().unwrap(), Origin::Web, "ada@example.com", "Ada's mailbox")
            .unwrap()
    };
    let grant = key.sign(&grant, now).unwrap();
    event(config::START_PATH, &[("cid", CID), ("origin", "web"), ("grant", &grant)], None)
}

/// The confirm button's post for a confirmation page `service` answered.
fn confirm_event(page: &lambda_http::Response<lambda_http::Body>) -> String {
    let html = String::from_utf8_lossy(page.body().as_ref()).into_owned();
    let ticket = ms_oauth_tests::startlink::confirm_ticket(&html).expect("confirmation ticket");
    let cookie = page.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap();
    // The start link's event, turned into the form post a browser sends from the page.
    let mut post: serde_json::Value =
        serde_json::from_str(&event(config::START_PATH, &[], Some(cookie.to_owned()))).unwrap();
    let route = format!("POST {}", config::START_PATH);
    post["routeKey"] = json!(route);
    post["requestContext"]["routeKey"] = json!(route);
    post["requestContext"]["http"]["method"] = json!("POST");
    post.as_object_mut().unwrap().remove("queryStringParameters");
    let headers = post["headers"].as_object_mut().unwrap();
    headers.insert("content-type".into(), json!("application/x-www-form-urlencoded"));
    headers.insert("origin".into(), json!("https://api.example.com"));
    headers.insert("sec-fetch-site".into(), json!("same-origin"));
    post["body"] = json!(format!("ticket={ticket}"));
    post.to_string()
}

/// A pending flow in `store` and the redirect event that finishes it.
async fn pending_redirect(store: &MemoryStore, n: u64) -> String {
    let state = format!("bench-state-{n:020}-{}", "s".repeat(20));
    let nonce = format!("bench-nonce-{n:020}");
    let key = StateKey::from_state(&state);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let flow = PendingFlow {
        connection_id: CID.parse().unwrap(),
        origin: Origin::Web,
        pkce_verifier: SecretString::from("v".repeat(43)),
        browser_hash: browser_hash(&nonce),
        created_at: now,
        expires_at: now + 600,
        ak_user_id: None,
        platform_user: None,
        connection_name: None,
        app_client_id: None,
        admin_consent: None,
    };
    store.put_state(&key, &flow).await.unwrap();
    let code = format!("M.C5_{}", "c".repeat(1000));
    event(
        config::REDIRECT_PATH,
        &[("code", &code), ("state", &state), ("session_state", "0a1b2c3d")],
        Some(format!("{}={nonce}", key.cookie_name())),
    )
}

fn parse(event: &str) -> Request {
    lambda_http::request::from_str(event).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn bench_start(c: &mut Criterion) {
    let rt = runtime();
    // The flow must really start, or the benchmark would time an error page.
    let check = start_service();
    let page = rt.block_on(oauth_start::handle(&check, parse(&start_event())));
    assert_eq!(page.status(), 200, "the start benchmark must time a confirmation page");
    let started = rt.block_on(oauth_start::handle(&check, parse(&confirm_event(&page))));
    assert_eq!(started.status(), 302, "the confirm benchmark must time a started flow");

    let mut group = c.benchmark_group("oauth-start");
    for (name, parse_timed) in VARIANTS {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                // A fresh service (and table) per sample keeps the in-memory table small.
                let service = start_service();
                let events: Vec<String> = (0..iters).map(|_| start_event()).collect();
                rt.block_on(time(&events, parse_timed, |r| oauth_start::handle(&service, r)))
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("oauth-start-confirm");
    for (name, parse_timed) in VARIANTS {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let service = start_service();
                let events: Vec<String> = (0..iters)
                    .map(|_| {
                        let page =
                            rt.block_on(oauth_start::handle(&service, parse(&start_event())));
                        confirm_event(&page)
                    })
                    .collect();
                rt.block_on(time(&events, parse_timed, |r| oauth_start::handle(&service, r)))
            });
        });
    }
    group.finish();
}

/// What each group times: the handler on a parsed request, and with the event's parsing.
const VARIANTS: [(&str, bool); 2] = [("handler", false), ("event+handler", true)];

/// Runs `handle` on each event; the clock runs over the handler alone, or over the event's
/// parsing and the handler.
async fn time<F, Fut>(events: &[String], parse_timed: bool, handle: F) -> Duration
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = lambda_http::Response<lambda_http::Body>>,
{
    if parse_timed {
        let begin = Instant::now();
        for event in events {
            std::hint::black_box(handle(parse(std::hint::black_box(event))).await);
        }
        return begin.elapsed();
    }
    let requests: Vec<Request> = events.iter().map(|e| parse(e)).collect();
    let begin = Instant::now();
    for request in requests {
        std::hint::black_box(handle(request).await);
    }
    begin.elapsed()
}

fn bench_redirect(c: &mut Criterion) {
    let rt = runtime();
    {
        let store = Arc::new(MemoryStore::default());
        let service = redirect_service(store.clone());
        let event = rt.block_on(pending_redirect(&store, 0));
        let response = rt.block_on(oauth_redirect::handle(&service, parse(&event)));
        assert_eq!(response.status(), 200, "the redirect benchmark must time a connected page");
        assert_eq!(store.pending(), 0);
    }

    let mut group = c.benchmark_group("oauth-redirect");
    for (name, parse_timed) in VARIANTS {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let store = Arc::new(MemoryStore::default());
                let service = redirect_service(store.clone());
                rt.block_on(async {
                    let mut events = Vec::with_capacity(iters as usize);
                    for n in 0..iters {
                        events.push(pending_redirect(&store, n).await);
                    }
                    time(&events, parse_timed, |r| oauth_redirect::handle(&service, r)).await
                })
            });
        });
    }
    group.finish();
}

/// Metrics as the functions write them on Lambda (EMF lines), into a sink instead of stdout.
#[derive(Debug)]
struct LineMetrics;

impl ms_oauth::metrics::Metrics for LineMetrics {
    fn record(&self, metric: ms_oauth::metrics::Metric) {
        use std::io::Write as _;
        let mut line = ms_oauth::metrics::emf_line("AutoKitteh/MicrosoftOAuth", &metric, 0);
        line.push('\n');
        let _ = std::io::sink().write_all(std::hint::black_box(line.as_bytes()));
    }
}

/// The audit trail as the functions write it on Lambda (one JSON line), into a sink; the
/// EventBridge call is not part of this figure (it is I/O, not CPU).
#[derive(Debug)]
struct LineAudit;

#[async_trait]
impl ms_oauth::audit::AuditTrail for LineAudit {
    async fn record(&self, event: ms_oauth::audit::AuditEvent) {
        use std::io::Write as _;
        let mut line = ms_oauth::audit::audit_line(&event);
        line.push('\n');
        let _ = std::io::sink().write_all(std::hint::black_box(line.as_bytes()));
    }
}

/// The redirect with and without its metric and audit lines (two EMF lines and one audit
/// line per sign-in): the difference is what observability costs per request.
fn bench_observability(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("observability");
    for (name, lines) in [("redirect without lines", false), ("redirect with lines", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let store = Arc::new(MemoryStore::default());
                let mut service = redirect_service(store.clone());
                if lines {
                    service =
                        service.with_metrics(Arc::new(LineMetrics)).with_audit(Arc::new(LineAudit));
                }
                rt.block_on(async {
                    let mut events = Vec::with_capacity(iters as usize);
                    for n in 0..iters {
                        events.push(pending_redirect(&store, n).await);
                    }
                    time(&events, false, |r| oauth_redirect::handle(&service, r)).await
                })
            });
        });
    }
    group.finish();
}

fn settings() -> Criterion {
    Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5))
}

criterion_group! { name = benches; config = settings(); targets = bench_start, bench_redirect, bench_observability }
criterion_main!(benches);
