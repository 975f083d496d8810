//! A stand-in for AWS STS's `GetWebIdentityToken` (IAM outbound identity federation): the
//! Query API the SDK calls, answering with RS256 JWTs about the calling role, and the
//! issuer's OIDC discovery document and key set, which the Microsoft stand-in fetches to
//! verify them as Entra does. Strict like the service: the account must have federation
//! enabled, an audience (1 to 10) and a signing algorithm are required, the lifetime is 60 to
//! 3600 seconds.
//!
//! Callers are told apart by the access key of their SigV4 `Authorization` header: each
//! access key is mapped to the role ARN it stands for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use tokio::net::TcpListener;

/// The key id of the stand-in's signing key in its key set.
pub const KEY_ID: &str = "standin-sts-1";

#[derive(Debug, Default)]
struct Inner {
    /// Whether the account enabled outbound identity federation.
    enabled: bool,
    /// Access key → role ARN.
    roles: HashMap<String, String>,
    /// Tokens issued, by subject.
    issued: Vec<String>,
    /// Answer every token request with HTTP 500 (an outage).
    failing: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    key: jsonwebtoken::EncodingKey,
    jwk: serde_json::Value,
    issuer: String,
}

impl Shared {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running STS stand-in.
#[derive(Clone)]
pub struct StsStandin {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StsStandin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsStandin").field("addr", &self.addr).finish()
    }
}

impl StsStandin {
    /// Serves on `listener`, with federation enabled and no role known yet.
    pub fn spawn(listener: TcpListener) -> std::io::Result<Self> {
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::traits::PublicKeyParts;
        let addr = listener.local_addr()?;
        let pair = ms_oauth::testing::certs::valid_certificate("sts.standin.example");
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(&pair.key_pem)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let public = private.to_public_key();
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": KEY_ID,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        let der = rsa::pkcs1::EncodeRsaPrivateKey::to_pkcs1_der(&private)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner { enabled: true, ..Inner::default() }),
            key,
            jwk,
            issuer: format!("http://{addr}"),
        });
        let app = Router::new()
            .route("/", post(query))
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/.well-known/jwks.json", get(key_set))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    /// The endpoint the STS client is pointed at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The account's issuer URL (`iss` of every token; what a federated identity credential
    /// names).
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// Callers signing with `access_key` are the role `role_arn`.
    pub fn add_role(&self, access_key: &str, role_arn: &str) {
        self.shared.inner().roles.insert(access_key.to_owned(), role_arn.to_owned());
    }

    /// Turns the account's outbound identity federation on or off.
    pub fn set_enabled(&self, enabled: bool) {
        self.shared.inner().enabled = enabled;
    }

    /// Makes every token request fail with HTTP 500.
    pub fn set_failing(&self, failing: bool) {
        self.shared.inner().failing = failing;
    }

    /// The subjects of the tokens issued so far, in order.
    pub fn issued(&self) -> Vec<String> {
        self.shared.inner().issued.clone()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
         <Code>{code}</Code><Message>{message}</Message></Error><RequestId>standin</RequestId></ErrorResponse>"
    );
    (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

/// The access key of a SigV4 `Authorization` header.
fn access_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let credential = value.split("Credential=").nth(1)?;
    Some(credential.split('/').next()?.to_owned())
}

async fn query(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if form.get("Action").map(String::as_str) != Some("GetWebIdentityToken") {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "Only GetWebIdentityToken is served here.",
        );
    }
    let role = {
        let inner = shared.inner();
        if inner.failing {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "Try again.");
        }
        if !inner.enabled {
            return error(
                StatusCode::FORBIDDEN,
                "OutboundWebIdentityFederationDisabledException",
                "Outbound web identity federation is not enabled for this account.",
            );
        }
        let Some(role) = access_key(&headers).and_then(|k| inner.roles.get(&k).cloned()) else {
            return error(StatusCode::FORBIDDEN, "AccessDenied", "The caller is not a known role.");
        };
        role
    };
    let audiences: Vec<String> =
        (1..=11).filter_map(|n| form.get(&format!("Audience.member.{n}")).cloned()).collect();
    if audiences.is_empty() || audiences.len() > 10 || audiences.iter().any(|a| a.is_empty()) {
        return error(StatusCode::BAD_REQUEST, "ValidationError", "Audience needs 1 to 10 values.");
    }
    match form.get("SigningAlgorithm").map(String::as_str) {
        Some("RS256") => {}
        // ES384 is the service's other choice; Entra verifies RS256 only, so this stand-in
        // signs RS256 only and refuses anything else.
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                "SigningAlgorithm must be RS256.",
            );
        }
    }
    let lifetime = match form.get("DurationSeconds").map(|d| d.parse::<i64>()) {
        None => 300,
        Some(Ok(d)) if (60..=3600).contains(&d) => d,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                "DurationSeconds is 60 to 3600.",
            );
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let jti = crate::random_base32(20);
    let aud = if audiences.len() == 1 { json!(audiences[0]) } else { json!(audiences) };
    let claims = json!({
        "iss": shared.issuer,
        "sub": role,
        "aud": aud,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": jti,
        "https://sts.amazonaws.com/": {"principal_id": role, "aws_account": "000000000000"},
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(KEY_ID.to_owned());
    let Ok(token) = jsonwebtoken::encode(&header, &claims, &shared.key) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "Signing failed.");
    };
    shared.inner().issued.push(role);
    let expiration = time::OffsetDateTime::from_unix_timestamp(now + lifetime)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    let body = format!(
        "<GetWebIdentityTokenResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <GetWebIdentityTokenResult><WebIdentityToken>{token}</WebIdentityToken>\
         <Expiration>{expiration}</Expiration></GetWebIdentityTokenResult>\
         <ResponseMetadata><RequestId>{jti}</RequestId></ResponseMetadata></GetWebIdentityTokenResponse>"
    );
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(json!({
        "issuer": shared.issuer,
        "jwks_uri": format!("{}/.well-known/jwks.json", shared.issuer),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES384"],
    }))
}

async fn key_set(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(json!({ "keys": [shared.jwk] }))
}
