//! What every function builds once at init: tracing, the AWS SDK config, the HTTP client.

use aws_config::BehaviorVersion;
use lambda_http::request::LambdaRequest;
use lambda_http::tracing::subscriber::filter::{LevelFilter, Targets};

/// The crates whose log lines we write: they log no secret at any level.
pub const OUR_CRATES: [&str; 6] = [
    "ms_oauth",
    "oauth_start",
    "oauth_redirect",
    "connection_api",
    "token_refresher",
    "ms_oauth_tests",
];

/// The most any library may log. Below it, the AWS SDK prints whole requests and responses
/// (`GetSecretValue`'s secret, KMS data keys, state items with their PKCE verifier) and
/// lambda_runtime whole events (codes, states, grants), whatever our own types redact.
pub const LIBRARY_LEVEL_CAP: LevelFilter = LevelFilter::WARN;

/// What is logged at `level`: our crates at that level, every other crate at most
/// [`LIBRARY_LEVEL_CAP`]. No level prints a secret.
pub fn log_filter(level: LevelFilter) -> Targets {
    Targets::new()
        .with_default(level.min(LIBRARY_LEVEL_CAP))
        .with_targets(OUR_CRATES.map(|c| (c, level)))
}

/// The level Lambda's logging configuration asks for (`AWS_LAMBDA_LOG_LEVEL`, else
/// `RUST_LOG`, as one level name); `INFO` when unset or not a level.
pub fn log_level(lookup: &dyn Fn(&str) -> Option<String>) -> LevelFilter {
    lookup("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|| lookup("RUST_LOG"))
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO)
}

/// Initialises tracing the way Lambda expects, level and format (text or JSON) from the
/// function's logging configuration (`AWS_LAMBDA_LOG_LEVEL`, `AWS_LAMBDA_LOG_FORMAT`), with
/// libraries capped (see [`log_filter`]).
pub fn init_tracing() {
    let lookup = |k: &str| std::env::var(k).ok();
    let json = lookup("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let _ = try_init_tracing(log_level(&lookup), json, std::io::stdout);
}

/// Installs the global subscriber writing to `writer` (tests capture it); an error if one
/// is installed already.
pub fn try_init_tracing<W>(
    level: LevelFilter,
    json: bool,
    writer: W,
) -> Result<(), lambda_http::tracing::subscriber::util::TryInitError>
where
    W: for<'w> lambda_http::tracing::subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use lambda_http::tracing::subscriber::fmt;
    use lambda_http::tracing::subscriber::prelude::*;
    let registry = lambda_http::tracing::subscriber::registry().with(log_filter(level));
    if json {
        registry
            .with(fmt::layer().json().with_target(false).without_time().with_writer(writer))
            .try_init()
    } else {
        registry
            .with(
                fmt::layer().with_target(false).without_time().with_ansi(false).with_writer(writer),
            )
            .try_init()
    }
}

/// Loads the AWS SDK configuration once, with our HTTP client. `AWS_ENDPOINT_URL` (or a
/// per-service variant) points every client at an emulator for local runs and tests.
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config_loader().load().await
}

/// How long one AWS call may take. DynamoDB, KMS and Secrets Manager answer in-region in
/// milliseconds; without bounds a stalled call ran to the Lambda timeout and the user got API
/// Gateway's bare 503 instead of our page. With the SDK's standard retry (3 attempts) a call
/// gives up after [`AWS_OPERATION_TIMEOUT`], which the functions' budgets (README,
/// "Timeouts") are built from.
pub const AWS_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// One attempt of an AWS call (connect, send, answer).
pub const AWS_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);
/// An AWS call with all its attempts and backoff.
pub const AWS_OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

fn aws_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(AWS_CONNECT_TIMEOUT)
        .operation_attempt_timeout(AWS_ATTEMPT_TIMEOUT)
        .operation_timeout(AWS_OPERATION_TIMEOUT)
        .build()
}

/// The SDK's default configuration loader with our HTTP client, for callers that add to it.
///
/// Lambda hands a function its role's credentials in `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, the first source the default chain
/// tries. When they are set they are read directly: building the rest of the chain (web
/// identity with its own STS client, SSO, container and instance metadata) cost about a fifth
/// of a function's Init and is never used there. Elsewhere (`akoauth` on a laptop) the
/// default chain applies unchanged.
pub fn aws_config_loader() -> aws_config::ConfigLoader {
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(crate::aws_http::ReqwestSdkClient::shared())
        .timeout_config(aws_timeouts());
    let from_env = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        .iter()
        .all(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if from_env {
        loader.credentials_provider(
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        )
    } else {
        loader
    }
}

/// The HTTP method guard both functions share: the flow is browser navigations (GET) only;
/// a HEAD from a link previewer must not start or consume anything.
pub fn is_navigation(method: &http::Method) -> bool {
    method == http::Method::GET
}

/// Set on a request whose query, path or host lambda_http could not turn into a URI, or whose
/// body marked base64 does not decode (it panics on those, which Lambda reports as an
/// invocation error and API Gateway as a bare 502). The request reaches the handler with
/// those parts cleared and this header, and the handler answers its own 400. A client
/// sending it only gets that 400.
pub const UNREADABLE_REQUEST: &str = "x-ms-oauth-unreadable-request";

/// Whether [`Readable`] had to clear parts of this request.
pub fn is_unreadable(req: &lambda_http::Request) -> bool {
    req.headers().contains_key(UNREADABLE_REQUEST)
}

/// Runs an HTTP handler on Lambda like `lambda_http::run`, except that a request lambda_http
/// cannot turn into a URI still reaches the handler (see [`UNREADABLE_REQUEST`]).
pub async fn run_http<'a, S, R, E>(handler: S) -> Result<(), lambda_http::Error>
where
    S: lambda_http::Service<lambda_http::Request, Response = R, Error = E>,
    S::Future: Send + 'a,
    R: lambda_http::IntoResponse,
    E: std::fmt::Debug + Into<lambda_http::lambda_runtime::Diagnostic>,
{
    lambda_http::lambda_runtime::run(Readable(lambda_http::Adapter::from(handler))).await
}

/// A service in front of lambda_http's adapter that makes every request convertible.
#[derive(Debug, Clone)]
pub struct Readable<S>(pub S);

impl<S> lambda_http::Service<lambda_http::LambdaEvent<LambdaRequest>> for Readable<S>
where
    S: lambda_http::Service<lambda_http::LambdaEvent<LambdaRequest>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut event: lambda_http::LambdaEvent<LambdaRequest>) -> Self::Future {
        make_readable(&mut event.payload);
        self.0.call(event)
    }
}

/// The parts of a request lambda_http builds its URI from, cleared in turn until the request
/// converts: the query, then the path (and stage), then the host. A body marked base64 that
/// does not decode (lambda_http panics on it too) is dropped first.
pub fn make_readable(payload: &mut LambdaRequest) {
    if !body_decodes(payload) {
        clear_body(payload);
    }
    for step in 0..3 {
        if uri_builds(payload) {
            return;
        }
        clear(payload, step);
    }
}

/// Whether lambda_http turns `payload` into a request without panicking. A mirror of its
/// conversion (lambda_http 1.3: the URI from host, stage, path and query; the body), as
/// fallible steps: no copy of the event, no unwinding (which a fuzzer cannot run through).
/// The `event` fuzz target checks the mirror against lambda_http itself.
pub fn converts(payload: &LambdaRequest) -> bool {
    body_decodes(payload) && uri_builds(payload)
}

fn body_decodes(payload: &LambdaRequest) -> bool {
    use base64::Engine as _;
    let (encoded, body) = match payload {
        LambdaRequest::ApiGatewayV2(r) => (r.is_base64_encoded, r.body.as_deref()),
        LambdaRequest::ApiGatewayV1(r) => (r.is_base64_encoded, r.body.as_deref()),
        LambdaRequest::Alb(r) => (r.is_base64_encoded, r.body.as_deref()),
        _ => return true,
    };
    match body {
        Some(b) if encoded => base64::engine::general_purpose::STANDARD.decode(b).is_ok(),
        _ => true,
    }
}

fn clear_body(payload: &mut LambdaRequest) {
    let marker = http::HeaderValue::from_static("1");
    match payload {
        LambdaRequest::ApiGatewayV2(r) => {
            r.body = None;
            r.headers.insert(UNREADABLE_REQUEST, marker);
        }
        LambdaRequest::ApiGatewayV1(r) => {
            r.body = None;
            r.headers.insert(UNREADABLE_REQUEST, marker.clone());
            r.multi_value_headers.insert(UNREADABLE_REQUEST, marker);
        }
        LambdaRequest::Alb(r) => {
            r.body = None;
            r.headers.insert(UNREADABLE_REQUEST, marker.clone());
            r.multi_value_headers.insert(UNREADABLE_REQUEST, marker);
        }
        _ => {}
    }
}

fn uri_builds(payload: &LambdaRequest) -> bool {
    use lambda_http::aws_lambda_events::query_map::QueryMap;
    fn single(headers: &http::HeaderMap) -> Option<&str> {
        headers.get(http::header::HOST).and_then(|v| v.to_str().ok())
    }
    let queries = |mv: &QueryMap, sv: &QueryMap| -> String {
        if !mv.is_empty() {
            format!("?{}", mv.to_query_string())
        } else if !sv.is_empty() {
            format!("?{}", sv.to_query_string())
        } else {
            String::new()
        }
    };
    let (path, headers, host, query) = match payload {
        LambdaRequest::ApiGatewayV2(r) => {
            let host = single(&r.headers).or(r.request_context.domain_name.as_deref());
            let path = path_with_stage(&r.request_context.stage, r.raw_path.as_deref());
            let query = match r.raw_query_string.as_deref() {
                Some(q) if !q.is_empty() => format!("?{q}"),
                _ => String::new(),
            };
            (path, &r.headers, host, query)
        }
        LambdaRequest::ApiGatewayV1(r) => {
            let host = single(&r.headers).or(r.request_context.domain_name.as_deref());
            let path = path_with_stage(&r.request_context.stage, r.path.as_deref());
            let query = queries(&r.multi_value_query_string_parameters, &r.query_string_parameters);
            (path, &r.headers, host, query)
        }
        LambdaRequest::Alb(r) => {
            let decode = |map: &QueryMap| -> QueryMap {
                let text = map.to_query_string();
                let decoded = percent_encoding::percent_decode(text.as_bytes()).decode_utf8_lossy();
                decoded.parse().unwrap_or_default()
            };
            let query = queries(
                &decode(&r.multi_value_query_string_parameters),
                &decode(&r.query_string_parameters),
            );
            (r.path.clone().unwrap_or_default(), &r.headers, single(&r.headers), query)
        }
        _ => return true,
    };
    let base = match host {
        None => url::Url::parse(&format!("http://localhost{path}")).map(|u| u.path().to_owned()),
        Some(host) => {
            let scheme =
                headers.get("x-forwarded-proto").and_then(|s| s.to_str().ok()).unwrap_or("https");
            url::Url::parse(&format!("{scheme}://{host}{path}")).map(|u| u.to_string())
        }
    };
    base.is_ok_and(|base| http::Uri::try_from(base + &query).is_ok())
}

/// lambda_http's stage prefix of API Gateway paths.
fn path_with_stage(stage: &Option<String>, path: Option<&str>) -> String {
    let path = path.unwrap_or_default();
    // Read once per instance, not per request (lambda_http reads it per event).
    static IGNORE_STAGE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *IGNORE_STAGE
        .get_or_init(|| std::env::var_os("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH").is_some())
    {
        return path.to_owned();
    }
    match stage.as_deref() {
        None | Some("$default") => path.to_owned(),
        Some(stage) if path.starts_with(&format!("/{stage}/")) => path.to_owned(),
        Some(stage) => format!("/{stage}{path}"),
    }
}

/// The REST API and ALB events carry the same single- and multi-value fields.
macro_rules! clear_multi_value {
    ($r:expr, $step:expr, $marker:expr) => {{
        match $step {
            0 => {
                $r.query_string_parameters = Default::default();
                $r.multi_value_query_string_parameters = Default::default();
            }
            1 => $r.path = Some("/".into()),
            _ => {
                $r.headers.remove(http::header::HOST);
                $r.multi_value_headers.remove(http::header::HOST);
            }
        }
        $r.headers.insert(UNREADABLE_REQUEST, $marker.clone());
        $r.multi_value_headers.insert(UNREADABLE_REQUEST, $marker);
    }};
}

fn clear(payload: &mut LambdaRequest, step: u8) {
    let marker = http::HeaderValue::from_static("1");
    match payload {
        LambdaRequest::ApiGatewayV2(r) => {
            match step {
                0 => {
                    r.raw_query_string = None;
                    r.query_string_parameters = Default::default();
                }
                1 => {
                    r.raw_path = Some("/".into());
                    r.request_context.stage = None;
                }
                _ => {
                    r.headers.remove(http::header::HOST);
                    r.request_context.domain_name = None;
                }
            }
            r.headers.insert(UNREADABLE_REQUEST, marker);
        }
        LambdaRequest::ApiGatewayV1(r) => {
            clear_multi_value!(r, step, marker);
            if step == 1 {
                r.request_context.stage = None;
            }
            if step >= 2 {
                r.request_context.domain_name = None;
            }
        }
        LambdaRequest::Alb(r) => clear_multi_value!(r, step, marker),
        _ => {}
    }
}

/// How long before Lambda's deadline a function stops waiting and answers itself: time to
/// render and return the answer.
pub const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(1500);

/// How long this invocation may still work before it must answer: Lambda's deadline for it,
/// less [`DEADLINE_MARGIN`]. `None` outside Lambda (local runs and tests).
pub fn time_left(req: &lambda_http::Request) -> Option<std::time::Duration> {
    use lambda_http::RequestExt as _;
    let deadline = req.lambda_context_ref()?.deadline();
    let left = deadline.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    Some(left.saturating_sub(DEADLINE_MARGIN))
}

/// Runs `work` for at most `limit`; past it, answers `too_late()` instead, so a stalled
/// dependency ends on our own answer rather than on API Gateway's bare 503. Every write
/// the work may have made is whole and safe to repeat, so stopping between them is safe.
pub async fn in_time<F, T>(
    limit: Option<std::time::Duration>,
    work: F,
    too_late: impl FnOnce() -> T,
) -> T
where
    F: std::future::Future<Output = T>,
{
    match limit {
        None => work.await,
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(done) => done,
            Err(_) => {
                tracing::error!(
                    limit_ms = limit.as_millis() as u64,
                    "no answer within the function's time; answered as timed out"
                );
                too_late()
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use lambda_http::tracing::Level;

    use super::*;

    #[test]
    fn no_level_lets_a_library_log_below_warn() {
        for level in [LevelFilter::TRACE, LevelFilter::DEBUG, LevelFilter::INFO] {
            let filter = log_filter(level);
            for library in [
                "aws_smithy_runtime::client::orchestrator",
                "aws_smithy_runtime::client::orchestrator::http",
                "lambda_runtime",
                "lambda_http",
                "hyper_util::client",
                "reqwest::connect",
            ] {
                assert!(!filter.would_enable(library, &Level::INFO), "{library} at {level}");
                assert!(filter.would_enable(library, &Level::WARN), "{library} warnings");
            }
            for ours in OUR_CRATES {
                let target = format!("{ours}::module");
                assert!(filter.would_enable(&target, &Level::INFO), "{ours} at {level}");
            }
        }
        let trace = log_filter(LevelFilter::TRACE);
        assert!(trace.would_enable("ms_oauth::store", &Level::TRACE));
        assert!(!log_filter(LevelFilter::WARN).would_enable("oauth_start", &Level::INFO));
    }

    /// An HTTP API (payload 2.0) event with this raw path and query.
    fn v2_event(raw_path: &str, raw_query: &str) -> LambdaRequest {
        serde_json::from_value(serde_json::json!({
            "version": "2.0", "routeKey": "GET /oauth/start/microsoft", "rawPath": raw_path,
            "rawQueryString": raw_query, "headers": {"host": "api.example.com"},
            "requestContext": {"accountId": "1", "apiId": "a", "domainName": "api.example.com",
                "http": {"method": "GET", "path": raw_path, "protocol": "HTTP/1.1",
                         "sourceIp": "203.0.113.7", "userAgent": "t"},
                "requestId": "r", "routeKey": "GET /oauth/start/microsoft", "stage": "$default",
                "time": "t", "timeEpoch": 0},
            "isBase64Encoded": false,
        }))
        .unwrap()
    }

    /// The status the adapter chain answers for `payload` with a handler that reports
    /// whether the request arrived marked unreadable.
    async fn status_for(payload: LambdaRequest) -> serde_json::Value {
        use lambda_http::Service as _;
        let handler = lambda_http::service_fn(|req: lambda_http::Request| async move {
            let status = if is_unreadable(&req) { 400 } else { 200 };
            let mut response = lambda_http::Response::new(lambda_http::Body::Empty);
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut service = Readable(lambda_http::Adapter::from(handler));
        let event = lambda_http::LambdaEvent::new(payload, lambda_http::Context::default());
        let response = service.call(event).await.unwrap();
        serde_json::to_value(&response).unwrap()["statusCode"].clone()
    }

    #[tokio::test]
    async fn requests_lambda_http_cannot_read_reach_the_handler_marked_not_as_a_panic() {
        // lambda_http itself panics on this one (found by the property tests).
        let bad = "cid=\"quoted\"|pipe";
        let probe = std::panic::catch_unwind(|| {
            drop(lambda_http::Request::from(v2_event("/oauth/start/microsoft", bad)))
        });
        assert!(probe.is_err(), "lambda_http reads it now; this guard may go");
        assert_eq!(status_for(v2_event("/oauth/start/microsoft", bad)).await, 400);
        assert_eq!(status_for(v2_event("/oauth/start/microsoft", "a={b}&c=<d>")).await, 400);
        assert_eq!(
            status_for(v2_event("/oauth/start/microsoft", "cid=con_x&origin=web")).await,
            200
        );
        assert_eq!(status_for(v2_event("/oauth/start/microsoft", "")).await, 200);
        // A host lambda_http cannot put in a URL panics it too.
        let mut bad_host = v2_event("/oauth/start/microsoft", "cid=x");
        if let LambdaRequest::ApiGatewayV2(r) = &mut bad_host {
            r.headers.insert("host", "bad host".parse().unwrap());
        }
        let probe = std::panic::catch_unwind(|| {
            let mut copy = v2_event("/oauth/start/microsoft", "cid=x");
            if let LambdaRequest::ApiGatewayV2(r) = &mut copy {
                r.headers.insert("host", "bad host".parse().unwrap());
            }
            drop(lambda_http::Request::from(copy));
        });
        assert!(probe.is_err());
        assert_eq!(status_for(bad_host).await, 400);
    }

    #[tokio::test]
    async fn work_past_the_deadline_ends_on_our_own_answer() {
        let mut req = lambda_http::Request::new(lambda_http::Body::Empty);
        assert_eq!(time_left(&req), None, "no deadline outside Lambda");
        let mut context = lambda_http::Context::default();
        let in_two_seconds = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
        context.deadline =
            in_two_seconds.duration_since(std::time::SystemTime::UNIX_EPOCH).unwrap().as_millis()
                as u64;
        req.extensions_mut().insert(context);
        let left = time_left(&req).unwrap();
        assert!(left <= std::time::Duration::from_millis(500), "{left:?}");
        let stalled = std::future::pending::<&str>();
        assert_eq!(in_time(Some(left), stalled, || "too late").await, "too late");
        assert_eq!(in_time(Some(left), async { "done" }, || "too late").await, "done");
        assert_eq!(in_time(None, async { "done" }, || "too late").await, "done");
    }

    #[tokio::test]
    async fn a_rest_api_event_lambda_http_cannot_read_is_cleared_too() {
        let event = |host: &str| -> LambdaRequest {
            serde_json::from_value(serde_json::json!({
                "resource": "/oauth/start/microsoft", "path": "/oauth/start/microsoft",
                "httpMethod": "GET", "headers": {"Host": host},
                "multiValueHeaders": {"Host": [host]},
                "queryStringParameters": {"cid": "x"}, "multiValueQueryStringParameters": {"cid": ["x"]},
                "requestContext": {"accountId": "1", "resourceId": "r", "stage": "prod",
                    "requestId": "i", "identity": {"sourceIp": "203.0.113.7"},
                    "resourcePath": "/oauth/start/microsoft", "httpMethod": "GET", "apiId": "a"},
                "body": null, "isBase64Encoded": false,
            }))
            .unwrap()
        };
        let probe =
            std::panic::catch_unwind(|| drop(lambda_http::Request::from(event("bad host"))));
        assert!(probe.is_err(), "lambda_http reads it now; this case may go");
        assert_eq!(status_for(event("bad host")).await, 400);
        assert_eq!(status_for(event("api.example.com")).await, 200);
    }

    #[tokio::test]
    async fn an_alb_path_or_a_body_lambda_http_would_panic_on_is_cleared() {
        let alb = |path: &str, host: Option<&str>, body: &str| -> LambdaRequest {
            let headers =
                host.map_or_else(|| serde_json::json!({}), |h| serde_json::json!({"host": h}));
            serde_json::from_value(serde_json::json!({
                "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/t/1"}},
                "httpMethod": "GET", "path": path, "queryStringParameters": {},
                "headers": headers, "body": body, "isBase64Encoded": true,
            }))
            .unwrap()
        };
        for (path, host, body) in [(":x/y", None, ""), ("/ok", Some("api.example.com"), "%%%")] {
            assert!(!converts(&alb(path, host, body)), "{path} {body}");
            let probe = std::panic::catch_unwind(|| {
                drop(lambda_http::Request::from(alb(path, host, body)))
            });
            assert!(probe.is_err(), "lambda_http reads {path:?} {body:?} now; this case may go");
            assert_eq!(status_for(alb(path, host, body)).await, 400);
        }
        let fine = alb("/oauth/start/microsoft", Some("api.example.com"), "aGk=");
        assert!(converts(&fine));
        assert_eq!(status_for(fine).await, 200);
        // A stage lambda_http puts in front of a path is mirrored too.
        let mut staged = v2_event("/x", "");
        if let LambdaRequest::ApiGatewayV2(r) = &mut staged {
            r.request_context.stage = Some("prod".into());
        }
        assert!(converts(&staged));
    }

    #[test]
    fn the_level_comes_from_lambdas_logging_configuration() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(log_level(&env(&[])), LevelFilter::INFO);
        assert_eq!(log_level(&env(&[("AWS_LAMBDA_LOG_LEVEL", "TRACE")])), LevelFilter::TRACE);
        assert_eq!(
            log_level(&env(&[("AWS_LAMBDA_LOG_LEVEL", "error"), ("RUST_LOG", "debug")])),
            LevelFilter::ERROR
        );
        assert_eq!(log_level(&env(&[("RUST_LOG", "debug")])), LevelFilter::DEBUG);
        // Directives are not a level: no library can be turned up through them.
        assert_eq!(log_level(&env(&[("RUST_LOG", "aws_smithy_runtime=trace")])), LevelFilter::INFO);
    }
}
