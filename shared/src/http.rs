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
}

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
        let body = response.bytes().await.map_err(HttpError::from_reqwest)?;
        let mut out = http::Response::new(body.to_vec());
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
