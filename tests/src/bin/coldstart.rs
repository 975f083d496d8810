//! Cold-start benchmark: each release-built function is spawned the way Lambda starts it
//! (`AWS_LAMBDA_RUNTIME_API` pointing at a Runtime API served here on loopback), sent one
//! event, and timed:
//! - Init: spawn → the runtime's first `GET …/invocation/next` (what Lambda bills as Init);
//! - first invocation: event handed out → response posted (includes its AWS calls to moto);
//! - peak RSS (`VmHWM`) after the first response.
//!
//! A hello-world `lambda_http` binary built with the same profile is measured in the same run
//! and each function's Init is reported as a ratio to it. Dependencies run on loopback
//! (moto); their own latency is measured and printed separately.
//!
//! Usage: coldstart [RUNS] [--dir DIR] [--json PATH] (binaries from target/release unless
//! `--dir` names another folder; `make bench-coldstart` builds them)

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use ms_oauth::domain::{ConnectionId, Origin};
use ms_oauth::grant::{GrantKey, StartGrant};
use ms_oauth::state::StateKey;
use ms_oauth_tests::aws;
use tokio::sync::Notify;

const START_LINK_KEY: &str = "coldstart-benchmark-start-link-key-0123456789";
const CID: &str = "con_0123456789abcdefghjkmnpqrs";

#[derive(Default)]
struct Timings {
    event: String,
    first_next: Option<Instant>,
    event_sent: Option<Instant>,
    responded: Option<Instant>,
    outcome: Option<String>,
}

#[derive(Clone)]
struct Runtime {
    timings: Arc<Mutex<Timings>>,
    done: Arc<Notify>,
}

async fn next(State(rt): State<Runtime>) -> axum::response::Response {
    let event = {
        let mut t = rt.timings.lock().unwrap();
        if t.first_next.is_some() {
            None
        } else {
            t.first_next = Some(Instant::now());
            t.event_sent = Some(Instant::now());
            Some(t.event.clone())
        }
    };
    let Some(event) = event else {
        // The function asks for a second event: keep it waiting until it is stopped.
        std::future::pending::<()>().await;
        return ().into_response();
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_static("00000000-0000-0000-0000-000000000001"),
    );
    let deadline = (time::OffsetDateTime::now_utc().unix_timestamp() + 30) * 1000;
    headers.insert(
        "lambda-runtime-deadline-ms",
        HeaderValue::from_str(&deadline.to_string()).unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:bench"),
    );
    (headers, event).into_response()
}

async fn finished(State(rt): State<Runtime>, outcome: String, body: String) {
    let mut t = rt.timings.lock().unwrap();
    t.responded = Some(Instant::now());
    let status = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("statusCode").and_then(serde_json::Value::as_u64))
        .map_or(outcome.clone(), |s| format!("{outcome} {s}"));
    t.outcome = Some(status);
    rt.done.notify_one();
}

struct Sample {
    init: Duration,
    invoke: Duration,
    rss_kib: u64,
    outcome: String,
}

async fn run_once(
    binary: &PathBuf,
    env: &HashMap<String, String>,
    event: &str,
) -> Result<Sample, String> {
    let rt = Runtime { timings: Arc::default(), done: Arc::new(Notify::new()) };
    rt.timings.lock().unwrap().event = event.to_owned();
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(|s: State<Runtime>, body: String| finished(s, "response".into(), body)),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(|s: State<Runtime>, body: String| {
                finished(s, format!("error {body}"), String::new())
            }),
        )
        .route(
            "/2018-06-01/runtime/init/error",
            post(|s: State<Runtime>, body: String| {
                finished(s, format!("init error {body}"), String::new())
            }),
        )
        .with_state(rt.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let started = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .envs(env)
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let waited = tokio::time::timeout(Duration::from_secs(30), rt.done.notified()).await;
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    server.abort();
    waited.map_err(|_| format!("{} did not answer within 30 s", binary.display()))?;
    let t = rt.timings.lock().unwrap();
    Ok(Sample {
        init: t.first_next.ok_or("no next")?.duration_since(started),
        invoke: t.responded.ok_or("no response")?.duration_since(t.event_sent.ok_or("no event")?),
        rss_kib,
        outcome: t.outcome.clone().unwrap_or_default(),
    })
}

fn apigw_event(method: &str, path_and_query: &str, route: &str, cookie: Option<&str>) -> String {
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", "api.example.com");
    if let Some(c) = cookie {
        builder = builder.header("cookie", c);
    }
    let req = builder.body(()).unwrap();
    ms_oauth_tests::local::api_gateway_event(&req, route, "203.0.113.7:443".parse().unwrap(), 1)
        .to_string()
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let runs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(15);
    // `--dir DIR`: the binaries of another build (e.g. `make bench-coldstart-static`).
    let release = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| aws::workspace_root().join("target/release"), std::path::PathBuf::from);

    // Dependencies on loopback, with their own latency measured.
    let endpoint = aws::spawn_moto(aws::free_port().unwrap()).expect("moto");
    let sdk = aws::sdk_config(&endpoint).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    aws::ensure_table(&dynamodb, "coldstart").await.unwrap();
    aws::ensure_kms_key(&aws_sdk_kms::Client::new(&sdk), "alias/coldstart").await.unwrap();
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    aws::ensure_secret(&secrets, "coldstart/start-link-key", START_LINK_KEY).await.unwrap();
    aws::ensure_secret(&secrets, "coldstart/client-secret", "secret").await.unwrap();
    let mut dep = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        dynamodb
            .get_item()
            .table_name("coldstart")
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("x".into()))
            .send()
            .await
            .unwrap();
        dep.push(t.elapsed());
    }
    let dependency = median(dep);

    let env: HashMap<String, String> = [
        ("AWS_LAMBDA_FUNCTION_NAME", "bench"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bench"),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("WEBHOOK_ADDRESS", "api.example.com"),
        ("MICROSOFT_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
        ("OAUTH_TABLE_NAME", "coldstart"),
        ("TOKEN_KMS_KEY_ID", "alias/coldstart"),
        ("KEY_SHARES_TABLE_NAME", "coldstart-key-shares"),
        ("MICROSOFT_CLIENT_SECRET_ARN", "coldstart/client-secret"),
        ("START_LINK_KEY_ARN", "coldstart/start-link-key"),
        ("PATH", "/usr/bin:/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain(
        // Knobs worth comparing: where the TLS stack looks for root certificates.
        ["SSL_CERT_FILE", "SSL_CERT_DIR"]
            .into_iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v))),
    )
    .collect();
    let mut start_only = env.clone();
    start_only.remove("MICROSOFT_CLIENT_SECRET_ARN");
    start_only.remove("TOKEN_KMS_KEY_ID");
    start_only.remove("KEY_SHARES_TABLE_NAME");
    let malformed_env = start_only.clone();
    let mut malformed: serde_json::Value = serde_json::from_str(&apigw_event(
        "GET",
        "/oauth/start/microsoft",
        "/oauth/start/microsoft",
        None,
    ))
    .unwrap();
    malformed["rawQueryString"] = serde_json::Value::String("cid=\"quoted\"|pipe".into());
    let malformed = malformed.to_string();
    let mut others = env.clone();
    others.remove("START_LINK_KEY_ARN");

    // Grants open once: each round's start gets its own.
    let start_link = || {
        let cid: ConnectionId = CID.parse().unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let grant = StartGrant {
            lifetime_secs: 600,
            ..StartGrant::new(cid, Origin::Web, "ada@example.com", "Ada's mailbox").unwrap()
        };
        let grant =
            GrantKey::new(START_LINK_KEY.to_owned().into()).unwrap().sign(&grant, now).unwrap();
        apigw_event(
            "GET",
            &format!("/oauth/start/microsoft?cid={CID}&origin=web&grant={grant}"),
            "/oauth/start/microsoft",
            None,
        )
    };
    let state = "s".repeat(43);
    let cookie = format!("{}=nonce", StateKey::from_state(&state).cookie_name());
    let scheduled = serde_json::json!({
        "version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-11-27T18:00:00Z", "region": "us-east-1",
        "resources": [], "detail": {}
    })
    .to_string();

    let fixed = |event: String| -> Box<dyn Fn() -> String> { Box::new(move || event.clone()) };
    type Case<'a> = (&'a str, HashMap<String, String>, Box<dyn Fn() -> String>);
    let cases: Vec<Case<'_>> = vec![
        ("hello-lambda", env.clone(), fixed(apigw_event("GET", "/", "/", None))),
        ("oauth-start", start_only, Box::new(start_link)),
        (
            "oauth-redirect",
            others.clone(),
            fixed(apigw_event(
                "GET",
                &format!("/oauth/redirect/microsoft?code=c&state={state}"),
                "/oauth/redirect/microsoft",
                Some(&cookie),
            )),
        ),
        // lambda_http cannot turn this query into a URI and panics; the instance must report
        // our 400 page (the functions catch it on a copy of the event), not an invocation error.
        ("oauth-start (query lambda_http cannot parse)", malformed_env, fixed(malformed)),
        (
            "connection-api",
            others.clone(),
            fixed(apigw_event(
                "GET",
                &format!("/connections/{CID}"),
                "/connections/{proxy+}",
                None,
            )),
        ),
        ("token-refresher", others, fixed(scheduled)),
    ];

    println!(
        "Cold start, {runs} runs each, release binaries (x86_64, this machine), loopback Runtime API."
    );
    println!("Dependency (moto DynamoDB GetItem) median: {:.2} ms\n", ms(dependency));
    println!(
        "| function | Init median | Init ratio to hello (median of per-round ratios) | first invocation median | peak RSS | first response |"
    );
    println!("|---|---|---|---|---|---|");
    // Rounds: each round starts every case once, so a change in the machine's speed during
    // the run (a shared VM) affects all cases alike; ratios are taken within a round.
    let mut samples: Vec<Vec<Sample>> = cases.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for ((name, env, event), out) in cases.iter().zip(samples.iter_mut()) {
            let binary = release.join(name.split_whitespace().next().unwrap_or(name));
            match run_once(&binary, env, &event()).await {
                Ok(s) => out.push(s),
                Err(e) => {
                    eprintln!("{name}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    let hello: Vec<Duration> = samples[0].iter().map(|s| s.init).collect();
    let mut rows = Vec::new();
    for ((name, _, _), runs) in cases.iter().zip(&samples) {
        let init = median(runs.iter().map(|s| s.init).collect());
        let ratios: Vec<f64> =
            runs.iter().zip(&hello).map(|(s, h)| s.init.as_secs_f64() / h.as_secs_f64()).collect();
        let ratio = median_f64(ratios);
        let invoke = median(runs.iter().map(|s| s.invoke).collect());
        let rss = runs.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let outcome = runs.last().map(|s| s.outcome.clone()).unwrap_or_default();
        rows.push(serde_json::json!({
            "function": name,
            "init_ms": ms(init),
            "init_ratio": ratio,
            "first_invocation_ms": ms(invoke),
            "peak_rss_mib": rss as f64 / 1024.0,
            "first_response": outcome,
        }));
        println!(
            "| {name} | {:.2} ms | {ratio:.2}× | {:.2} ms | {:.1} MiB | {outcome} |",
            ms(init),
            ms(invoke),
            rss as f64 / 1024.0
        );
        if name.contains("cannot parse") && !outcome.starts_with("response 400") {
            eprintln!("{name}: expected our 400 page, got {outcome}");
            std::process::exit(1);
        }
    }
    if let Some(path) = json {
        let report = serde_json::json!({
            "runs": runs,
            "arch": std::env::consts::ARCH,
            "dependency_get_item_ms": ms(dependency),
            "functions": rows,
        });
        std::fs::write(&path, report.to_string()).expect("write the JSON report");
    }
}
