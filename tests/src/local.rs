//! Serves the real handlers on their API paths over HTTP, the way API Gateway (HTTP API,
//! payload 2.0) would call them: each request becomes an API Gateway event and is parsed by
//! `lambda_http` itself before reaching the handler.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use connection_api::ConnectionApi;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lambda_http::Body;
use ms_oauth::config::{FUNCTION_PATHS, REDIRECT_PATH, START_FUNCTION_PATHS};
use oauth_redirect::RedirectService;
use oauth_start::StartService;
use serde_json::json;
use tokio::net::TcpListener;

/// The functions served over HTTP behind one local address (the refresher runs on a
/// schedule, not behind an address).
#[derive(Debug, Clone)]
pub struct Functions {
    pub start: Arc<StartService>,
    pub redirect: Arc<RedirectService>,
    /// The connection API (IAM-authorized in AWS; open on this local address).
    pub api: Arc<ConnectionApi>,
}

/// Accepts connections on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, functions: Functions) {
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let functions = functions.clone();
        let counter = counter.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let functions = functions.clone();
                let id = counter.fetch_add(1, Ordering::Relaxed);
                async move { Ok::<_, Infallible>(dispatch(&functions, req, peer, id).await) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn dispatch(
    functions: &Functions,
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
    id: u64,
) -> hyper::Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let route = match path.as_str() {
        p if FUNCTION_PATHS.contains(&p) => path.clone(),
        p if p.starts_with("/connections/") => "/connections/{proxy+}".to_owned(),
        _ => {
            return plain(
                404,
                "Not found. This local server serves /oauth/start/microsoft[_teams], /oauth/adminconsent/microsoft, /oauth/redirect/microsoft, the refused /microsoft/oauth and /connections/….\n",
            );
        }
    };
    let mut event = api_gateway_event(&req, &route, peer, id);
    // Bodies (the confirm form) travel base64-encoded, as API Gateway hands over non-JSON
    // payloads; lambda_http decodes them.
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if !body.is_empty() {
        use base64::Engine as _;
        event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(&body));
        event["isBase64Encoded"] = json!(true);
    }
    let request = match lambda_http::request::from_str(&event.to_string()) {
        Ok(r) => r,
        Err(e) => {
            return plain(
                400,
                &format!("request could not be expressed as an API Gateway event: {e}\n"),
            );
        }
    };
    let response = match route.as_str() {
        r if START_FUNCTION_PATHS.contains(&r) => {
            oauth_start::handle(&functions.start, request).await
        }
        REDIRECT_PATH => oauth_redirect::handle(&functions.redirect, request).await,
        _ => connection_api::handle(&functions.api, request).await,
    };
    into_hyper(response)
}

const LOCAL_ACCOUNT: &str = "000000000000";
/// The IAM principal every local call of the connection API is authorized as.
pub const LOCAL_CALLER_ARN: &str = "arn:aws:iam::000000000000:user/local-platform";

/// An API Gateway HTTP API (payload format 2.0) event for `req`.
pub fn api_gateway_event<B>(
    req: &hyper::Request<B>,
    route: &str,
    peer: SocketAddr,
    id: u64,
) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    let mut cookies = Vec::new();
    for (name, value) in req.headers() {
        let Ok(value) = value.to_str() else { continue };
        if name == hyper::header::COOKIE {
            cookies.extend(value.split(';').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()));
            continue;
        }
        let entry = headers.entry(name.as_str().to_owned()).or_insert_with(|| json!(""));
        let joined = match entry.as_str() {
            Some("") | None => value.to_owned(),
            Some(prev) => format!("{prev},{value}"),
        };
        *entry = json!(joined);
    }
    let host =
        req.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let now = time::OffsetDateTime::now_utc();
    // API Gateway authorizes the connection API's routes with IAM and names the caller.
    let authorizer = route.starts_with("/connections").then(|| {
        json!({"iam": {"accountId": LOCAL_ACCOUNT, "callerId": "AIDALOCALPLATFORM", "userArn": LOCAL_CALLER_ARN, "userId": "AIDALOCALPLATFORM"}})
    });
    json!({
        "version": "2.0",
        "routeKey": format!("{} {route}", req.method()),
        "rawPath": req.uri().path(),
        "rawQueryString": req.uri().query().unwrap_or(""),
        "cookies": cookies,
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": host,
            "domainPrefix": "local",
            "http": {
                "method": req.method().as_str(),
                "path": req.uri().path(),
                "protocol": "HTTP/1.1",
                "sourceIp": peer.ip().to_string(),
                "userAgent": req.headers().get(hyper::header::USER_AGENT).and_then(|h| h.to_str().ok()).unwrap_or(""),
            },
            "requestId": format!("local-{id}"),
            "authorizer": authorizer,
            "routeKey": format!("{} {route}", req.method()),
            "stage": "$default",
            "time": now.unix_timestamp().to_string(),
            "timeEpoch": now.unix_timestamp() * 1000,
        },
        "isBase64Encoded": false,
    })
}

fn into_hyper(response: lambda_http::Response<Body>) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = response.into_parts();
    let bytes = match body {
        Body::Empty => Bytes::new(),
        Body::Text(t) => Bytes::from(t),
        Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    hyper::Response::from_parts(parts, Full::new(bytes))
}

fn plain(status: u16, text: &str) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
