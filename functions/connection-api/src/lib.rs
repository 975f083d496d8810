//! The platform's API for connections, behind IAM authorization (SigV4):
//!
//! - `GET /connections/{cid}`: status, auth type, non-secret vars; never a token.
//! - `GET /connections/{cid}/token[?force_refresh=true]`: a valid access token.
//! - `DELETE /connections/{cid}`: deletes tokens and vars; idempotent.
//! - `GET|PUT|DELETE /connections/{cid}/app`: the connection's own Entra app (private
//!   user-delegated or daemon); its credential is written, never read back.
//!
//! Documented in `openapi.yaml` beside this crate.

// The handlers' futures (a refresh with its retries, KMS, DynamoDB and the AutoKitteh
// write-back inside the deadline guard) are deeper than the compiler lays out by default.
#![recursion_limit = "256"]

use http::{HeaderValue, Method, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use ms_oauth::audit::{Actor, Caller};
use ms_oauth::config::ADMIN_CONSENT_PATH;
use ms_oauth::config::ConfigError;
use ms_oauth::domain::ConnectionId;
use ms_oauth::metrics::{Metric, name as metric};
use ms_oauth::microsoft::{FailureClass, TokenError};
use ms_oauth::registration::{AppFailure, AppRequest};
use ms_oauth::store::{AUTH_TYPE_DEFAULT, ConnectionVars, STATUS_NEEDS_REAUTH};
use ms_oauth::tokens::{TokenFailure, TokenService};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

/// The API's state, built once per instance.
#[derive(Debug)]
pub struct ConnectionApi {
    pub tokens: TokenService,
}

impl ConnectionApi {
    pub fn from_sdk(
        lookup: &dyn Fn(&str) -> Option<String>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, ConfigError> {
        let role = ms_oauth::config::Role::ConnectionApi;
        Self::wire(&ms_oauth::wiring::Wiring::new(role, lookup, sdk))
    }

    /// Builds the API through `wiring`.
    pub fn wire(wiring: &ms_oauth::wiring::Wiring<'_>) -> Result<Self, ConfigError> {
        Ok(Self { tokens: TokenService::wire(wiring)? })
    }
}

/// `GET /connections/{cid}`
#[derive(Debug, Serialize)]
pub struct StatusResponse {
    pub connection_id: String,
    /// `ok`, `needs_reauth` or `init_required`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vars: Option<ConnectionVars>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_refresh_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

enum Route {
    Status(ConnectionId),
    Token(ConnectionId, bool),
    Disconnect(ConnectionId),
    GetApp(ConnectionId),
    SetApp(ConnectionId, Box<AppRequest>),
    RemoveApp(ConnectionId),
}

/// A request the API refuses before doing anything; a 405 names the methods the resource
/// answers (RFC 9110 `Allow`).
struct Refusal(StatusCode, &'static str, String, Option<&'static str>);

/// The methods each resource answers (the `Allow` header of its 405).
const CONNECTION_METHODS: &str = "GET, DELETE";
const TOKEN_METHODS: &str = "GET";
const APP_METHODS: &str = "GET, PUT, DELETE";
/// Longest app request body (a certificate chain with its key is a few KB).
const MAX_APP_BODY: usize = 64 * 1024;

fn route(req: &Request) -> Result<Route, Refusal> {
    if ms_oauth::runtime::is_unreadable(req) {
        let message = "the path or query contains characters a URL may not hold".to_owned();
        return Err(Refusal(StatusCode::BAD_REQUEST, "invalid_request", message, None));
    }
    let path = req.raw_http_path();
    let path = if path.is_empty() { req.uri().path().to_owned() } else { path.to_owned() };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (cid, tail) = match parts.as_slice() {
        ["connections", cid] => (*cid, None),
        ["connections", cid, "token"] => (*cid, Some("token")),
        ["connections", cid, "app"] => (*cid, Some("app")),
        _ => {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such resource".into(),
                None,
            ));
        }
    };
    let cid: ConnectionId = cid.parse().map_err(|e: ms_oauth::domain::InvalidInput| {
        Refusal(StatusCode::BAD_REQUEST, "invalid_request", e.to_string(), None)
    })?;
    match (req.method(), tail) {
        (&Method::GET, None) => Ok(Route::Status(cid)),
        (&Method::DELETE, None) => Ok(Route::Disconnect(cid)),
        (&Method::GET, Some("app")) => Ok(Route::GetApp(cid)),
        (&Method::DELETE, Some("app")) => Ok(Route::RemoveApp(cid)),
        (&Method::PUT, Some("app")) => Ok(Route::SetApp(cid, Box::new(app_request(req)?))),
        (&Method::GET, Some(_)) => {
            let force =
                match req.query_string_parameters_ref().and_then(|q| q.first("force_refresh")) {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(_) => {
                        return Err(Refusal(
                            StatusCode::BAD_REQUEST,
                            "invalid_request",
                            "force_refresh must be true or false".into(),
                            None,
                        ));
                    }
                };
            Ok(Route::Token(cid, force))
        }
        (_, tail) => {
            let allow = match tail {
                Some("app") => APP_METHODS,
                Some(_) => TOKEN_METHODS,
                None => CONNECTION_METHODS,
            };
            Err(Refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this resource answers {allow}"),
                Some(allow),
            ))
        }
    }
}

/// The body of `PUT /connections/{cid}/app`. Its text is never echoed: it holds a secret.
fn app_request(req: &Request) -> Result<AppRequest, Refusal> {
    let bad = |message: &str| {
        Refusal(StatusCode::BAD_REQUEST, "invalid_request", message.to_owned(), None)
    };
    let body: &[u8] = req.body().as_ref();
    if body.len() > MAX_APP_BODY {
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {MAX_APP_BODY} bytes"),
            None,
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        // The parser's message names fields and positions, never values.
        let what = match e.classify() {
            serde_json::error::Category::Data => {
                "the body must hold auth_type, client_id, tenant_id (strings) and one of client_secret or certificate (strings) or aws_federation: true, and nothing else"
            }
            _ => "the body must be a JSON object",
        };
        bad(what)
    })
}

/// Handles one request; every outcome is a JSON response.
pub async fn handle(api: &ConnectionApi, req: Request) -> Response<Body> {
    let limit = ms_oauth::runtime::time_left(&req);
    let too_late = || {
        let message = "a dependency is slow to answer; retry shortly";
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    };
    // Boxed: the whole handler as one future type is deeper than the compiler will lay out
    // with release optimisations.
    ms_oauth::runtime::in_time(limit, Box::pin(answer(api, req)), too_late).await
}

async fn answer(api: &ConnectionApi, req: Request) -> Response<Body> {
    let operation = operation(&req);
    let response = respond_to(api, req).await;
    let status = status_label(response.status());
    api.tokens
        .metrics
        .record(Metric::count(metric::API_ANSWER, &[("Operation", operation), ("Status", status)]));
    response
}

/// Who calls: the IAM principal API Gateway authorized (the route's `AWS_IAM`), and its
/// request id.
fn caller(req: &Request) -> Caller {
    use lambda_http::request::RequestContext;
    let (arn, request_id) = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => (
            context
                .authorizer
                .as_ref()
                .and_then(|a| a.iam.as_ref())
                .and_then(|i| i.user_arn.clone()),
            context.request_id.clone(),
        ),
        _ => (None, None),
    };
    Caller::new(
        Actor::Iam(arn.unwrap_or_else(|| "unidentified".to_owned())),
        request_id.unwrap_or_else(ms_oauth::audit::fresh_request_id),
    )
}

/// The operation a request asks for, as metrics name it (a closed set).
fn operation(req: &Request) -> &'static str {
    let path = req.uri().path().trim_end_matches('/');
    let tail = if path.ends_with("/token") {
        "token"
    } else if path.ends_with("/app") {
        "app"
    } else {
        "connection"
    };
    match (req.method(), tail) {
        (&Method::GET, "token") => "get_token",
        (&Method::GET, "app") => "get_app",
        (&Method::PUT, "app") => "set_app",
        (&Method::DELETE, "app") => "remove_app",
        (&Method::GET, "connection") => "get_connection",
        (&Method::DELETE, "connection") => "disconnect",
        _ => "other",
    }
}

/// A status as a metric dimension: the codes this API answers, the rest as `other`.
fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        400 => "400",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        422 => "422",
        500 => "500",
        502 => "502",
        503 => "503",
        _ => "other",
    }
}

async fn respond_to(api: &ConnectionApi, req: Request) -> Response<Body> {
    let caller = caller(&req);
    match route(&req) {
        Err(Refusal(status, code, message, allow)) => {
            let mut response = error(status, code, &message);
            if let Some(allow) = allow {
                response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            response
        }
        Ok(Route::Status(cid)) => status(api, &cid).await,
        Ok(Route::Token(cid, force)) => token(api, &cid, force, &caller).await,
        Ok(Route::Disconnect(cid)) => match api.tokens.disconnect_by(&cid, &caller).await {
            Ok(_) => {
                respond(StatusCode::OK, &json!({"connection_id": cid, "status": "init_required"}))
            }
            Err(e) => failure(api, &cid, e),
        },
        Ok(Route::GetApp(cid)) => match api.tokens.app_summary(&cid).await {
            Ok(Some(app)) => {
                respond(StatusCode::OK, &json!({"connection_id": cid, "app": app.answer(&cid)}))
            }
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                "no_app",
                "the connection uses the server-wide app (oauthDefault)",
            ),
            Err(e) => failure(api, &cid, e),
        },
        Ok(Route::SetApp(cid, request)) => match api.tokens.set_app(&cid, *request).await {
            Ok(saved) => respond(
                StatusCode::OK,
                &json!({
                    "connection_id": cid,
                    "app": saved.summary.answer(&cid),
                    "version": saved.version,
                    "organization": saved.organization,
                }),
            ),
            Err(e) => app_failure(api, &cid, e),
        },
        Ok(Route::RemoveApp(cid)) => match api.tokens.remove_app(&cid, &caller).await {
            Ok(removed) => respond(
                StatusCode::OK,
                &json!({"connection_id": cid, "removed": removed, "auth_type": AUTH_TYPE_DEFAULT}),
            ),
            Err(e) => failure(api, &cid, e),
        },
    }
}

fn app_failure(api: &ConnectionApi, cid: &ConnectionId, e: AppFailure) -> Response<Body> {
    match e {
        AppFailure::Invalid(e) => error(StatusCode::BAD_REQUEST, "invalid_app", &e.to_string()),
        AppFailure::Refused(e) => {
            let class = e.class();
            let mut body = json!({
                "error": if class == FailureClass::AdminConsent { "admin_consent_required" } else { "app_refused" },
                "message": ms_oauth::registration::advice(&e),
                "reason": e.reason(),
            });
            if class == FailureClass::AdminConsent {
                body["admin_consent_path"] = json!(format!("{ADMIN_CONSENT_PATH}?cid={cid}"));
            }
            if matches!(e.code(), Some(70021 | 700_211 | 700_212 | 700_213)) {
                body["federation_audience"] = json!(ms_oauth::federation::own_app_audience(cid));
            }
            let status = match class {
                FailureClass::AdminConsent => StatusCode::CONFLICT,
                FailureClass::Transient => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            respond(status, &body)
        }
        AppFailure::Unavailable(e) => failure(api, cid, e),
    }
}

async fn status(api: &ConnectionApi, cid: &ConnectionId) -> Response<Body> {
    match api.tokens.store.get_connection(cid).await {
        Ok(None) => respond(
            StatusCode::OK,
            &StatusResponse {
                connection_id: cid.to_string(),
                status: "init_required".into(),
                reason: None,
                auth_type: None,
                vars: None,
                last_refresh_at: None,
                updated_at: None,
            },
        ),
        Ok(Some(stored)) => {
            let c = stored.connection;
            respond(
                StatusCode::OK,
                &StatusResponse {
                    connection_id: cid.to_string(),
                    status: c.status,
                    reason: c.status_reason,
                    auth_type: Some(c.auth_type),
                    vars: Some(c.vars),
                    last_refresh_at: Some(c.last_refresh_at),
                    updated_at: Some(c.updated_at),
                },
            )
        }
        Err(e) => failure(api, cid, TokenFailure::Store(e)),
    }
}

async fn token(
    api: &ConnectionApi,
    cid: &ConnectionId,
    force: bool,
    caller: &Caller,
) -> Response<Body> {
    match api.tokens.token_by(cid, force, caller).await {
        Ok(grant) => respond(
            StatusCode::OK,
            &json!({
                "access_token": grant.access_token.expose_secret(),
                "token_type": grant.token_type,
                "expires_at": grant.expires_at.format(&Rfc3339).unwrap_or_default(),
                "refreshed": grant.refreshed,
                "stale": grant.stale,
            }),
        ),
        Err(e) => failure(api, cid, e),
    }
}

fn failure(api: &ConnectionApi, cid: &ConnectionId, e: TokenFailure) -> Response<Body> {
    ms_oauth::metrics::record_dependency_failure(&*api.tokens.metrics, e.failed_dependency());
    match e {
        TokenFailure::NotConnected => error(
            StatusCode::CONFLICT,
            "init_required",
            "the connection has no tokens; sign in first",
        ),
        TokenFailure::NeedsReauth { reason } => respond(
            StatusCode::CONFLICT,
            &json!({"error": STATUS_NEEDS_REAUTH, "message": "the connection needs a new sign-in", "reason": reason}),
        ),
        TokenFailure::Token(e) if e.class() == FailureClass::AppMisconfigured => {
            tracing::error!(cid = %cid, error = %ms_oauth::error::chain(&e), "the connection's app is refused");
            let reason = match &e {
                TokenError::Rejected(m) => m.reason(),
                other => format!("{}: {other}", FailureClass::AppMisconfigured.as_str()),
            };
            respond(
                StatusCode::BAD_GATEWAY,
                &json!({"error": "app_misconfigured", "message": "Microsoft refused the connection's app credential; set a new secret or certificate on the app", "reason": reason}),
            )
        }
        TokenFailure::RefreshFailed { failure, retry_after_secs, .. } => {
            tracing::warn!(cid = %cid, failure = %failure, "no token refreshed: the refresh failed");
            if failure.starts_with(FailureClass::AppMisconfigured.as_str()) {
                return respond(
                    StatusCode::BAD_GATEWAY,
                    &json!({"error": "app_misconfigured", "message": "Microsoft refused the connection's app credential; set a new secret or certificate on the app", "reason": failure}),
                );
            }
            let mut r = respond(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "refresh_failed", "message": "the token could not be refreshed; no new token was issued, retry after the time given", "reason": failure}),
            );
            if let Ok(after) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, after);
            }
            r
        }
        TokenFailure::Corrupt => {
            tracing::error!(cid = %cid, error = %ms_oauth::error::chain(&e), "token request failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the connection's stored secrets are unreadable",
            )
        }
        other => {
            tracing::error!(cid = %cid, error = %ms_oauth::error::chain(&other), "token request failed");
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "a dependency is unavailable; retry shortly",
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    respond(status, &json!({"error": code, "message": message}))
}

fn respond<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{\"error\":\"internal\"}".into());
    let mut response = Response::new(Body::Text(text));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
