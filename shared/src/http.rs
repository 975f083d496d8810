//! The one outbound HTTP client, the transport seam behind it, and its adapter for the
//! `oauth2` crate.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};

/// Builds the HTTP client every Microsoft call goes through: no redirect following (a
/// redirect from the token endpoint or Graph is never legitimate and could be used for
/// SSRF), bounded connect and total time.
pub fn build_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(crate::aws_http::POOL_IDLE_TIMEOUT)
        .user_agent(concat!("autokitteh-microsoft-oauth/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A transport-level failure talking to Microsoft.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request timed out")]
    Timeout(#[source] reqwest::Error),
    #[error("request failed")]
    Transport(#[source] reqwest::Error),
    #[error("server answered HTTP {0}")]
    Status(u16),
    #[error("the answer is larger than {} bytes", MAX_BODY_BYTES)]
    TooLarge,
}

/// The largest answer read from Microsoft or AutoKitteh: theirs are a few kilobytes (a token
/// response with a large access token stays far below); anything longer is refused, not
/// held in memory.
pub const MAX_BODY_BYTES: usize = 1 << 20;

impl HttpError {
    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        // The URL a reqwest error carries is one of our fixed endpoints; it never holds secrets.
        if e.is_timeout() { Self::Timeout(e) } else { Self::Transport(e) }
    }
}

/// Sends one request to Microsoft and returns whatever status it answered with. Production
/// uses [`reqwest::Client`]; benchmarks answer in-process to measure our own CPU cost.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError>;
}

#[async_trait]
impl Transport for reqwest::Client {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let request = reqwest::Request::try_from(request).map_err(HttpError::Transport)?;
        let response = self.execute(request).await.map_err(HttpError::from_reqwest)?;
        let status = response.status();
        let headers = response.headers().clone();
        if response.content_length().is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(HttpError::TooLarge);
        }
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(HttpError::from_reqwest)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(HttpError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let mut out = http::Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

/// Runs `oauth2` requests on a [`Transport`]. Server errors (5xx) become
/// [`HttpError::Status`] so callers can tell an outage from a rejected request, which
/// `oauth2` alone cannot.
#[derive(Debug, Clone, Copy)]
pub struct OAuthHttp<'a>(pub &'a dyn Transport);

impl<'c> AsyncHttpClient<'c> for OAuthHttp<'_> {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = self.0.send(request).await?;
            if response.status().is_server_error() {
                return Err(HttpError::Status(response.status().as_u16()));
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one answer of `len` bytes (with or without its length) on loopback.
    async fn serve(len: usize, chunked: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let body = vec![b'a'; len];
            let head = if chunked {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
            } else {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n")
            };
            let _ = stream.write_all(head.as_bytes()).await;
            if chunked {
                for part in body.chunks(64 * 1024) {
                    let _ = stream.write_all(format!("{:x}\r\n", part.len()).as_bytes()).await;
                    let _ = stream.write_all(part).await;
                    let _ = stream.write_all(b"\r\n").await;
                }
                let _ = stream.write_all(b"0\r\n\r\n").await;
            } else {
                let _ = stream.write_all(&body).await;
            }
        });
        format!("http://{addr}/")
    }

    async fn fetch(url: &str) -> Result<HttpResponse, HttpError> {
        let client = build_client(Duration::from_secs(5)).unwrap();
        let request = http::Request::builder().uri(url).body(Vec::new()).unwrap();
        client.send(request).await
    }

    #[tokio::test]
    async fn answers_past_a_megabyte_are_refused_whether_announced_or_streamed() {
        assert_eq!(fetch(&serve(1000, false).await).await.unwrap().body().len(), 1000);
        assert_eq!(
            fetch(&serve(MAX_BODY_BYTES, true).await).await.unwrap().body().len(),
            MAX_BODY_BYTES
        );
        for chunked in [false, true] {
            let refused = fetch(&serve(MAX_BODY_BYTES + 1, chunked).await).await;
            assert!(matches!(refused, Err(HttpError::TooLarge)), "chunked {chunked}: {refused:?}");
        }
    }
}
