//! The AWS SDK's HTTP client: the same reqwest stack the Microsoft calls use (rustls with
//! Mozilla's root certificates compiled in).
//!
//! The SDK's default client loads the platform's root certificates from disk and parses
//! every one of them each time a service client is created, which made Init of a function
//! with three AWS clients several times slower than a hello-world function. With this
//! client there is nothing to read or parse at init, and one TLS implementation is linked
//! instead of two.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;

/// Connect timeout when the SDK sets none (the SDK's own default).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);

/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

type Timeouts = (Option<Duration>, Option<Duration>);

/// An [`HttpClient`] for the AWS SDK on reqwest. One reqwest client (and connection pool)
/// per distinct timeout setting, shared by every service client of an `SdkConfig`.
#[derive(Debug, Clone, Default)]
pub struct ReqwestSdkClient {
    clients: Arc<Mutex<HashMap<Timeouts, reqwest::Client>>>,
}

impl ReqwestSdkClient {
    /// The client to hand to `aws_config::ConfigLoader::http_client`.
    pub fn shared() -> SharedHttpClient {
        SharedHttpClient::new(Self::default())
    }

    fn client(&self, timeouts: Timeouts) -> Result<reqwest::Client, reqwest::Error> {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(&timeouts) {
            return Ok(client.clone());
        }
        let (connect, read) = timeouts;
        let mut builder = reqwest::Client::builder()
            // AWS endpoints never redirect; the SDK expects to see every answer itself.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
            // A frozen Lambda instance keeps its pooled connections while the other end
            // closes them; reusing one after a long freeze costs a failed attempt. Idle
            // connections are dropped well before AWS endpoints close them.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT);
        if let Some(read) = read {
            builder = builder.read_timeout(read);
        }
        let client = builder.build()?;
        clients.insert(timeouts, client.clone());
        Ok(client)
    }
}

impl HttpClient for ReqwestSdkClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let client = self.client((settings.connect_timeout(), settings.read_timeout()));
        SharedHttpConnector::new(Connector(client.map_err(Arc::new)))
    }
}

#[derive(Debug, Clone)]
struct Connector(Result<reqwest::Client, Arc<reqwest::Error>>);

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.0.clone();
        HttpConnectorFuture::new(async move {
            let client = client.map_err(|e| ConnectorError::other(Box::new(e), None))?;
            let request = request.try_into_http1x().map_err(|e| ConnectorError::user(e.into()))?;
            let (parts, body) = request.into_parts();
            // The SDK operations used here (DynamoDB, KMS, Secrets Manager, EventBridge) all
            // send small in-memory JSON bodies.
            let body = body.bytes().map(<[u8]>::to_vec).ok_or_else(|| {
                ConnectorError::user("streaming request bodies are not supported".into())
            })?;
            let request = reqwest::Request::try_from(http::Request::from_parts(parts, body))
                .map_err(|e| ConnectorError::user(e.into()))?;
            let response = client.execute(request).await.map_err(classify)?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.map_err(classify)?;
            let mut out = http::Response::new(SdkBody::from(bytes));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            HttpResponse::try_from(out).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// Timeouts and transport failures are what the SDK's retry strategy treats as transient;
/// a connection lost before or during the answer is an I/O error, retried like the SDK's
/// own client does.
fn classify(e: reqwest::Error) -> ConnectorError {
    if e.is_timeout() {
        ConnectorError::timeout(e.into())
    } else if e.is_connect() || e.is_request() || e.is_body() {
        ConnectorError::io(e.into())
    } else {
        ConnectorError::other(e.into(), None)
    }
}
