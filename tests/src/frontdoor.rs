//! A local front door on the public address, as an operator puts one in front of the
//! AutoKitteh API host: the Microsoft OAuth paths go to the functions, everything else
//! to AutoKitteh, with cookies, query strings and the original Host passed along.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The paths the front door sends to the functions; nothing else under `/oauth/` (other
/// integrations use it too).
pub use ms_oauth::config::FUNCTION_PATHS;

/// Headers that belong to one hop and are never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[derive(Debug)]
struct Upstreams {
    functions: String,
    autokitteh: String,
    http: reqwest::Client,
}

/// Serves the front door on `listener` until the runtime stops: the function paths go to
/// `functions`, the rest to `autokitteh` (both base URLs, e.g. `http://127.0.0.1:9001`).
pub async fn serve(listener: TcpListener, functions: String, autokitteh: String) {
    let http = match reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()
    {
        Ok(c) => c,
        Err(_) => return,
    };
    let upstreams = Arc::new(Upstreams { functions, autokitteh, http });
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let upstreams = upstreams.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let upstreams = upstreams.clone();
                async move { Ok::<_, Infallible>(forward(&upstreams, req, peer.ip()).await) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn forward(
    upstreams: &Upstreams,
    req: hyper::Request<Incoming>,
    peer: std::net::IpAddr,
) -> hyper::Response<Full<Bytes>> {
    let path = req.uri().path();
    let base =
        if FUNCTION_PATHS.contains(&path) { &upstreams.functions } else { &upstreams.autokitteh };
    let target = format!("{base}{}", req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let method = req.method().clone();
    let mut headers = req.headers().clone();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(host) = headers.remove(hyper::header::HOST) {
        headers.insert("x-forwarded-host", host);
    }
    headers.insert("x-forwarded-proto", hyper::header::HeaderValue::from_static("http"));
    if let Ok(ip) = hyper::header::HeaderValue::from_str(&peer.to_string()) {
        headers.insert("x-forwarded-for", ip);
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(400, "unreadable request body"),
    };
    let answer = upstreams.http.request(method, &target).headers(headers).body(body).send().await;
    let answer = match answer {
        Ok(a) => a,
        Err(_) => return plain(502, "the front door's upstream did not answer"),
    };
    let status = answer.status();
    let mut headers = answer.headers().clone();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(hyper::header::CONTENT_LENGTH);
    let bytes = answer.bytes().await.unwrap_or_default();
    let mut response = hyper::Response::new(Full::new(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn plain(status: u16, text: &str) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    response
}
