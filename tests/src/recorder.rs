//! An HTTP proxy in front of the AWS emulator that records every AWS call passing through it:
//! which action, on which resource, with which KMS encryption context. Each function under a
//! policy test gets its own, so every call is known to come from that function's role.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use tokio::net::TcpListener;

/// The account and region the emulator reports in its ARNs.
pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = crate::aws::LOCAL_REGION;

/// One AWS call as an authorization decision sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AwsCall {
    /// `service:Operation`, as IAM names it (`dynamodb:PutItem`).
    pub action: String,
    /// The ARN the call acts on.
    pub resource: String,
    /// The KMS encryption context; for a DynamoDB call on one item, its partition key as
    /// `dynamodb:LeadingKeys` (empty otherwise).
    pub context: BTreeMap<String, String>,
}

impl AwsCall {
    pub fn new(action: &str, resource: &str, context: &[(&str, &str)]) -> Self {
        Self {
            action: action.to_owned(),
            resource: resource.to_owned(),
            context: context.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }
}

/// A running recorder; it lives as long as its runtime.
#[derive(Debug, Clone)]
pub struct Recorder {
    url: String,
    calls: Arc<Mutex<Vec<AwsCall>>>,
    /// Calls whose action or resource could not be read (a test fails on any).
    unreadable: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct Relay {
    upstream: String,
    /// Where STS calls go (the STS stand-in), when not to `upstream`.
    sts_upstream: Option<String>,
    http: reqwest::Client,
    recorder: Recorder,
}

impl Recorder {
    /// Forwards every request on `listener` to `upstream` (`http://host:port`), recording it.
    pub fn spawn(listener: TcpListener, upstream: &str) -> std::io::Result<Self> {
        Self::spawn_routed(listener, upstream, None)
    }

    /// The same, with STS calls forwarded to `sts_upstream` instead.
    pub fn spawn_routed(
        listener: TcpListener,
        upstream: &str,
        sts_upstream: Option<&str>,
    ) -> std::io::Result<Self> {
        let recorder = Self {
            url: format!("http://{}", listener.local_addr()?),
            calls: Arc::default(),
            unreadable: Arc::default(),
        };
        let relay = Relay {
            upstream: upstream.trim_end_matches('/').to_owned(),
            sts_upstream: sts_upstream.map(|u| u.trim_end_matches('/').to_owned()),
            http: reqwest::Client::new(),
            recorder: recorder.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(relay);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(recorder)
    }

    /// `http://127.0.0.1:PORT`: the endpoint to give the function's AWS clients.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every call recorded so far.
    pub fn calls(&self) -> Vec<AwsCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Requests that were forwarded but could not be read as an AWS call.
    pub fn unreadable(&self) -> Vec<String> {
        self.unreadable.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn record(&self, call: Result<Vec<AwsCall>, String>) {
        match call {
            Ok(calls) => {
                if let Ok(mut all) = self.calls.lock() {
                    all.extend(calls);
                }
            }
            Err(why) => {
                if let Ok(mut all) = self.unreadable.lock() {
                    all.push(why);
                }
            }
        }
    }
}

async fn forward(State(relay): State<Relay>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 16 << 20).await else {
        return status(400);
    };
    let target = header(&parts.headers, "x-amz-target");
    let authorization = header(&parts.headers, "authorization");
    relay.recorder.record(read_call(&target, &authorization, &body));

    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let upstream = match (&relay.sts_upstream, signing_service(&authorization)) {
        (Some(sts), Some("sts")) => sts,
        _ => &relay.upstream,
    };
    let mut out = relay.http.request(parts.method, format!("{upstream}{path}"));
    for (name, value) in &parts.headers {
        if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
            out = out.header(name, value);
        }
    }
    let Ok(answer) = out.body(body).send().await else {
        return status(502);
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if name != http::header::TRANSFER_ENCODING && name != http::header::CONTENT_LENGTH {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).unwrap_or_else(|_| status(502))
}

fn status(code: u16) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = http::StatusCode::from_u16(code).unwrap_or_default();
    response
}

fn header(headers: &http::HeaderMap, name: &str) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// The signing service named in a SigV4 `Authorization` header's credential scope.
fn signing_service(authorization: &str) -> Option<&str> {
    let credential = authorization.split("Credential=").nth(1)?;
    let scope = credential.split([',', ' ']).next()?;
    scope.split('/').nth(3)
}

/// Reads one JSON-protocol AWS request (DynamoDB, KMS, Secrets Manager, EventBridge) as the
/// The condition key of a DynamoDB item's partition key.
pub const LEADING_KEYS: &str = "dynamodb:LeadingKeys";

/// calls IAM authorizes; a PutEvents of several buses is one call per bus.
pub fn read_call(target: &str, authorization: &str, body: &[u8]) -> Result<Vec<AwsCall>, String> {
    if signing_service(authorization) == Some("sts") {
        return read_sts_call(body);
    }
    let operation = target.rsplit('.').next().filter(|o| !o.is_empty());
    let (Some(service), Some(operation)) = (signing_service(authorization), operation) else {
        return Err(format!("no SigV4 service or X-Amz-Target ({target:?})"));
    };
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("{service}:{operation}: {e}"))?;
    let text = |field: &str| json[field].as_str().map(str::to_owned);
    let action = format!("{service}:{operation}");
    let missing = |field: &str| format!("{action} without {field}");
    let one = |resource: String, context: BTreeMap<String, String>| {
        Ok(vec![AwsCall { action: action.clone(), resource, context }])
    };
    match service {
        "dynamodb" => {
            let table = text("TableName").ok_or_else(|| missing("TableName"))?;
            let table = format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table}");
            // The partition key of the one item a call names (GetItem, UpdateItem and
            // DeleteItem by `Key`, PutItem by `Item`): what `dynamodb:LeadingKeys` tests.
            let item = if json["Key"].is_object() { &json["Key"] } else { &json["Item"] };
            let leading: BTreeMap<String, String> = item["pk"]["S"]
                .as_str()
                .map(|pk| BTreeMap::from([(LEADING_KEYS.to_owned(), pk.to_owned())]))
                .unwrap_or_default();
            match text("IndexName") {
                Some(index) => one(format!("{table}/index/{index}"), BTreeMap::new()),
                None => one(table, leading),
            }
        }
        "kms" => {
            let key = text("KeyId").ok_or_else(|| missing("KeyId"))?;
            let context = json["EncryptionContext"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            one(key, context)
        }
        "secretsmanager" => {
            one(text("SecretId").ok_or_else(|| missing("SecretId"))?, BTreeMap::new())
        }
        "events" => {
            let entries = json["Entries"].as_array().ok_or_else(|| missing("Entries"))?;
            let mut buses: Vec<String> = entries
                .iter()
                .map(|e| e["EventBusName"].as_str().unwrap_or("default").to_owned())
                .collect();
            buses.sort();
            buses.dedup();
            Ok(buses
                .into_iter()
                .map(|bus| AwsCall {
                    action: action.clone(),
                    resource: if bus.starts_with("arn:") {
                        bus
                    } else {
                        format!("arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{bus}")
                    },
                    context: BTreeMap::new(),
                })
                .collect())
        }
        other => Err(format!("a call to {other}, which no function is expected to make")),
    }
}

/// The condition keys of `sts:GetWebIdentityToken`. The audience is multi-valued: its
/// values are kept joined by newlines.
pub const STS_AUDIENCE: &str = "sts:IdentityTokenAudience";
pub const STS_SIGNING_ALGORITHM: &str = "sts:SigningAlgorithm";
pub const STS_DURATION: &str = "sts:DurationSeconds";

/// Reads one STS Query-protocol request (form-encoded).
fn read_sts_call(body: &[u8]) -> Result<Vec<AwsCall>, String> {
    let form: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|e| format!("sts: {e}"))?;
    let get = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let action = get("Action").ok_or("an STS call without Action")?;
    if action != "GetWebIdentityToken" {
        return Err(format!("a call to sts:{action}, which no function is expected to make"));
    }
    let audiences: Vec<String> = form
        .iter()
        .filter(|(k, _)| k.starts_with("Audience.member."))
        .map(|(_, v)| v.clone())
        .collect();
    let mut context = BTreeMap::new();
    if !audiences.is_empty() {
        context.insert(STS_AUDIENCE.to_owned(), audiences.join("\n"));
    }
    if let Some(algorithm) = get("SigningAlgorithm") {
        context.insert(STS_SIGNING_ALGORITHM.to_owned(), algorithm);
    }
    // Without DurationSeconds, STS uses 300 and so does the request context.
    context.insert(STS_DURATION.to_owned(), get("DurationSeconds").unwrap_or_else(|| "300".into()));
    Ok(vec![AwsCall { action: "sts:GetWebIdentityToken".into(), resource: "*".into(), context }])
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: &str = "AWS4-HMAC-SHA256 Credential=testing/20261205/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00";

    #[test]
    fn kms_calls_are_read_with_their_key_and_context() {
        let body = br#"{"KeyId":"arn:aws:kms:us-east-1:123456789012:key/k","EncryptionContext":{"store":"s","connection_id":"c"}}"#;
        let calls = read_call("TrentService.Decrypt", AUTH, body).unwrap();
        assert_eq!(
            calls,
            vec![AwsCall::new(
                "kms:Decrypt",
                "arn:aws:kms:us-east-1:123456789012:key/k",
                &[("connection_id", "c"), ("store", "s")]
            )]
        );
    }

    #[test]
    fn dynamodb_index_queries_name_the_index_and_unreadable_calls_are_errors() {
        let auth = AUTH.replace("/kms/", "/dynamodb/");
        let body = br#"{"TableName":"t","IndexName":"refresh-due"}"#;
        let calls = read_call("DynamoDB_20120810.Query", &auth, body).unwrap();
        assert_eq!(
            calls[0].resource,
            format!("arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/t/index/refresh-due")
        );
        assert!(read_call("DynamoDB_20120810.Query", &auth, b"{}").is_err());
        let body = br#"{"TableName":"t","Key":{"pk":{"S":"app#con_1"}}}"#;
        let calls = read_call("DynamoDB_20120810.GetItem", &auth, body).unwrap();
        assert_eq!(calls[0].context[LEADING_KEYS], "app#con_1");
        let body = br#"{"TableName":"t","Item":{"pk":{"S":"state#ab"},"kind":{"S":"state"}}}"#;
        let calls = read_call("DynamoDB_20120810.PutItem", &auth, body).unwrap();
        assert_eq!(calls[0].context[LEADING_KEYS], "state#ab");
        assert!(read_call("", &auth, b"{}").is_err());
        assert!(read_call("TrentService.Decrypt", "", b"{}").is_err());
    }
}
