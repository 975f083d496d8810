//! Entry points of the fuzz targets in `fuzz/` (the `fuzzing` feature): every parser of
//! outside input, fed whatever the fuzzer makes. Each must return without panicking; where
//! a parser accepts something, what it accepted is checked. `cargo test` runs each entry on a
//! few inputs so they stay in step with the code.

// A failed check here is a finding: it must stop the fuzzer, loudly.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use lambda_http::request::LambdaRequest;
use oauth2::{AccessToken, AuthorizationCode, PkceCodeVerifier, RefreshToken};
use secrecy::SecretString;

use crate::autokitteh::{AkToken, AutoKitteh, Var};
use crate::config::Config;
use crate::domain::{ConnectionId, Origin, Tenant};
use crate::grant::{GrantKey, is_label};
use crate::http::{HttpError, Transport};
use crate::microsoft::{Endpoints, Microsoft, MicrosoftError, MicrosoftTokenResponse};
use crate::request::{Query, ak_session, cookie, posted_from};

const CID: &str = "con_0123456789abcdefghjkmnpqrs";
const KEY: &str = "fuzzing-start-link-key-of-32-bytes-at-least";
const NOW: i64 = 1_800_000_000;
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";

fn cid() -> ConnectionId {
    CID.parse().unwrap()
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Every reader a handler applies to a request.
fn read_request(req: &lambda_http::Request) {
    for query in [Query::from_request(req), Query::from_form(req)].into_iter().flatten() {
        for name in ["cid", "origin", "grant", "ticket", "code", "state", "error", "tenant"] {
            if let Ok(Some(value)) = query.single(name, 4096) {
                if let Ok(id) = value.parse::<ConnectionId>() {
                    assert_eq!(id.as_str(), value);
                }
                let _ = value.parse::<Origin>();
                let _ = value.parse::<Tenant>();
            }
        }
    }
    let _ = cookie(req, "ms_oauth_state_0123456789abcdef");
    let _ = ak_session(req);
    let _ = posted_from(req, "https://api.example.com");
    let _ = crate::runtime::is_unreadable(req);
}

/// An API Gateway (v1, v2) or ALB event, through our readability check, lambda_http's own
/// conversion (which must then not panic: the check mirrors it) and every reader.
pub fn event(data: &[u8]) {
    let Ok(mut payload) = serde_json::from_slice::<LambdaRequest>(data) else { return };
    crate::runtime::make_readable(&mut payload);
    assert!(crate::runtime::converts(&payload), "the check left an unreadable event");
    let req = lambda_http::Request::from(payload);
    read_request(&req);
}

fn v2_event(query: &str, cookies: Option<Vec<String>>, body: Option<String>) -> LambdaRequest {
    let method = if body.is_some() { "POST" } else { "GET" };
    serde_json::from_value(serde_json::json!({
        "version": "2.0", "routeKey": "$default", "rawPath": "/oauth/start/microsoft",
        "rawQueryString": query, "cookies": cookies,
        "headers": {"host": "api.example.com", "content-type": "application/x-www-form-urlencoded",
                    "origin": "https://api.example.com"},
        "requestContext": {"accountId": "1", "apiId": "a", "domainName": "api.example.com",
            "http": {"method": method, "path": "/oauth/start/microsoft", "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "fuzz"},
            "requestId": "r", "routeKey": "$default", "stage": "$default", "time": "t",
            "timeEpoch": 0},
        "body": body, "isBase64Encoded": false,
    }))
    .unwrap()
}

fn through_lambda_http(mut payload: LambdaRequest) {
    crate::runtime::make_readable(&mut payload);
    read_request(&lambda_http::Request::from(payload));
}

/// A raw query string.
pub fn query(data: &[u8]) {
    through_lambda_http(v2_event(&text(data), None, None));
}

/// A form body (the confirm button's post).
pub fn form(data: &[u8]) {
    through_lambda_http(v2_event("", None, Some(text(data))));
}

/// A connection's own app from outside: the API's request body, PEM and DER certificates,
/// AutoKitteh's app vars (split at `\n` into `name=value`), a sealed credential's
/// plaintext. Whatever is accepted is a valid app whose summary never shows a secret.
pub fn app(data: &[u8]) {
    let as_text = text(data);
    let now = time::OffsetDateTime::from_unix_timestamp(NOW).unwrap();
    if let Ok(request) = serde_json::from_slice::<crate::registration::AppRequest>(data) {
        let secret = request.client_secret.clone();
        if let Ok(app) = request.into_app(now, None) {
            let summary = serde_json::to_string(&app.summary()).unwrap();
            if let Some(secret) = secret.filter(|s| s.len() > 8) {
                assert!(!summary.contains(&secret), "a secret in the summary");
            }
            assert!(app.tenant.as_str().parse::<Tenant>().is_ok());
        }
    }
    if let Ok(cert) = crate::apps::Certificate::from_pem(&as_text) {
        let _ = cert.check_valid_at(now);
        let assertion =
            cert.assertion("0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3", "https://login/t", now);
        assert!(assertion.is_ok(), "a certificate accepted with a key that cannot sign");
    }
    let _ = crate::apps::certificate_not_after(data);
    let vars: Vec<crate::autokitteh::Var> = as_text
        .split('\n')
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| crate::autokitteh::Var::plain(name, value))
        .collect();
    let _ = crate::apps::app_ref_from_vars(&vars);
    let _ = crate::apps::app_from_vars(&vars);
    let _ = crate::apps::Credential::from_plaintext(data, None);
}

/// Cookie headers (`;`-separated, split into the v2 event's cookie list at `\n`).
pub fn cookies(data: &[u8]) {
    let list = text(data).split('\n').map(str::to_owned).collect();
    through_lambda_http(v2_event("", Some(list), None));
}

/// Start grants and confirmations: anything unsigned is refused; claims of any content,
/// validly signed, pass only when they are valid.
pub fn grant(data: &[u8]) {
    let key = GrantKey::new(SecretString::from(KEY.to_owned())).unwrap();
    let token = text(data);
    // Not signed with the key: refused, whatever its shape.
    assert!(key.verify(&token, &cid(), Origin::Web, NOW).is_err());
    let _ = key.verify_confirmation(&token, NOW);
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let signed = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
    );
    let Ok(signed) = signed else { return };
    if let Ok(accepted) = key.verify(&signed, &cid(), Origin::Web, NOW) {
        assert_eq!(accepted.cid, CID);
        assert_eq!(accepted.origin, "web");
        assert!(is_label(&accepted.sub) && is_label(&accepted.name), "{accepted:?}");
        assert!(accepted.exp > NOW - 60 && accepted.exp - accepted.iat <= 600, "{accepted:?}");
    }
    let _ = key.verify_confirmation(&signed, NOW);
}

/// id_tokens: raw, and with each of three parts base64url-encoded.
pub fn id_token(data: &[u8]) {
    use base64::Engine as _;
    let raw = text(data);
    let _ = crate::microsoft::read_id_token(&raw);
    let parts: Vec<&str> = raw.splitn(3, '\n').collect();
    let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let encoded: Vec<String> = parts.iter().map(|p| enc(p)).collect();
    if let Ok(claims) = crate::microsoft::read_id_token(&encoded.join(".")) {
        assert!(!claims.tid.is_empty() && !claims.oid.is_empty(), "{claims:?}");
    }
}

/// Answers every request with the status and body it was made with.
#[derive(Debug)]
struct Canned {
    status: u16,
    body: Vec<u8>,
}

#[async_trait]
impl Transport for Canned {
    async fn send(&self, _: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        let mut response = http::Response::new(self.body.clone());
        *response.status_mut() = http::StatusCode::from_u16(self.status).unwrap_or_default();
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        Ok(response)
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().unwrap())
}

/// Splits fuzz input into (which call, status, body).
fn canned(data: &[u8]) -> Option<(u8, Canned)> {
    let (&[which, hi, lo], body) = data.split_first_chunk::<3>()?;
    let status = 100 + u16::from_be_bytes([hi, lo]) % 500;
    Some((which, Canned { status, body: body.to_vec() }))
}

fn endpoints() -> Endpoints {
    let vars = [
        ("WEBHOOK_ADDRESS", "api.example.com"),
        ("MICROSOFT_CLIENT_ID", CLIENT_ID),
        ("OAUTH_TABLE_NAME", "t"),
    ];
    let config =
        Config::from_lookup(&|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()))
            .unwrap();
    Endpoints::new(&config)
}

/// Microsoft's answers, any status and body, through the real client: the token endpoint
/// (code and refresh), Graph `/me` and `/organization`, and the error pages' parsers.
pub fn microsoft(data: &[u8]) {
    let _ = serde_json::from_slice::<MicrosoftTokenResponse>(data);
    if let Ok(e) = serde_json::from_slice::<MicrosoftError>(data) {
        let _ = e.reason();
    }
    let as_text = text(data);
    let _ = crate::microsoft::aadsts_code(&as_text);
    let _ = MicrosoftError::from_callback(&as_text, Some(&as_text));
    let Some((which, transport)) = canned(data) else { return };
    let endpoints = endpoints();
    let auth = crate::microsoft::ClientAuth::default_app(
        &endpoints,
        SecretString::from("secret".to_owned()),
    );
    let client = Microsoft::with_transport(endpoints, Arc::new(transport));
    runtime().block_on(async {
        match which % 5 {
            0 => {
                let verifier = PkceCodeVerifier::new("v".repeat(43));
                if let Ok(tokens) = client
                    .exchange_code(AuthorizationCode::new("code".into()), verifier, &auth)
                    .await
                {
                    assert_eq!(tokens.claims.aud, CLIENT_ID, "a token for another app");
                    let now = time::OffsetDateTime::from_unix_timestamp(NOW).unwrap();
                    let expiry = crate::microsoft::expiry_after(now, tokens.expires_in);
                    assert!(expiry >= now && expiry <= now + crate::microsoft::MAX_TOKEN_LIFETIME);
                }
            }
            1 => {
                if let Ok(refreshed) = client
                    .refresh(&RefreshToken::new("rt".into()), &auth, &["User.Read".to_owned()])
                    .await
                {
                    let now = time::OffsetDateTime::from_unix_timestamp(NOW).unwrap();
                    let _ = crate::microsoft::expiry_after(now, refreshed.expires_in);
                }
            }
            2 => {
                let _ = client.me(&AccessToken::new("at".into())).await;
            }
            3 => {
                // A daemon app's client-credentials token.
                if let Ok(token) = client.app_token(&auth).await {
                    let now = time::OffsetDateTime::from_unix_timestamp(NOW).unwrap();
                    let _ = crate::microsoft::expiry_after(now, token.expires_in);
                }
                if let Err(e) = client.app_token(&auth).await {
                    let _ = e.class();
                }
            }
            _ => {
                let _ = client.organization(&AccessToken::new("at".into())).await;
            }
        }
    });
}

/// AutoKitteh's answers, any status and body, through the real client: WhoAmI, Get, and
/// Vars Get and Set.
pub fn autokitteh(data: &[u8]) {
    let Some((which, transport)) = canned(data) else { return };
    let base = url::Url::parse("https://api.autokitteh.example").unwrap();
    let client = AutoKitteh::new(base, Arc::new(transport));
    let token = AkToken::new("session").unwrap();
    runtime().block_on(async {
        match which % 4 {
            0 => {
                if let Ok(user) = client.who_am_i(&token).await {
                    assert!(!user.user_id.is_empty());
                }
            }
            1 => {
                if let Ok(Some(c)) = client.connection(&token, &cid()).await {
                    assert_eq!(c.connection_id, CID, "another connection accepted");
                }
            }
            2 => {
                let _ = client.get_vars(&token, &cid(), &["oauth_access_token"]).await;
            }
            _ => {
                let _ = client.set_vars(&token, &cid(), &[Var::plain("user_id", "u")]).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_runs_on_ordinary_and_odd_inputs() {
        let event = include_bytes!("../../functions/oauth-start/tests/data/apigw-v2-start.json");
        super::event(event);
        super::event(include_bytes!("../../functions/oauth-start/tests/data/apigw-v1-start.json"));
        super::event(b"{}");
        query(b"cid=con_0123456789abcdefghjkmnpqrs&origin=web&grant=a.b.c");
        query(b"a={b}&%zz");
        form(b"ticket=a.b.c&x=%ff");
        app(br#"{"auth_type":"oauthPrivate","client_id":"0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3","client_secret":"s3cr3t-value"}"#);
        app(b"auth_type=daemonApp\nprivate_client_id=0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3\nprivate_client_secret=x");
        app(crate::testing::certs::valid_certificate("fuzz.example").bundle().as_bytes());
        app(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----");
        cookies(b"ak_logged_in=true; ak_user_session=abc\nms_oauth_state_x=1");
        grant(b"{\"aud\":\"autokitteh-oauth-start:microsoft\",\"cid\":\"con_0123456789abcdefghjkmnpqrs\"}");
        grant(b"not.a.grant");
        // Extreme times, validly signed: refused, not an overflow.
        let cid = CID;
        for (iat, exp) in [(i64::MIN, i64::MAX), (0, i64::MAX), (i64::MIN, NOW), (NOW, i64::MIN)] {
            let claims = serde_json::json!({"aud": "autokitteh-oauth-start:microsoft", "cid": cid,
                "origin": "web", "sub": "u", "name": "n", "jti": "0123456789abcdef0123456789abcdef",
                "iat": iat, "exp": exp});
            grant(claims.to_string().as_bytes());
        }
        id_token(b"{\"alg\":\"none\"}\n{\"tid\":\"t\",\"oid\":\"o\",\"aud\":\"a\"}\nsig");
        microsoft(b"\x00\x00\x64{\"access_token\":\"a\",\"token_type\":\"Bearer\",\"id_token\":\"x.y.z\"}");
        microsoft(b"\x01\x01\x2c{\"error\":\"invalid_grant\"}");
        microsoft(b"\x01\x00\x64{\"access_token\":\"a\",\"token_type\":\"Bearer\",\"expires_in\":18446744073709551615}");
        microsoft(b"\x02\x00\x64{\"id\":\"u\"}");
        microsoft(b"\x03\x00\x64{\"value\":[]}");
        autokitteh(b"\x00\x00\x64{\"user\":{\"userId\":\"u\"}}");
        autokitteh(b"\x01\x01\x2c{\"code\":\"unauthenticated\"}");
        autokitteh(b"\x02\x00\x64{\"vars\":[]}");
        autokitteh(b"\x03\x00\x64{}");
    }
}
