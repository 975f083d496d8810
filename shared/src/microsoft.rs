//! The Microsoft identity platform (authorize, token) and the two Graph reads we need.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::{
    BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet,
    EndpointSet, ErrorResponse, ExtraTokenFields, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::Config;
use crate::domain::PERSONAL_ACCOUNT_TENANT;
use crate::http::{HttpError, OAuthHttp, Transport};
use crate::state::FlowSecrets;

/// Fields of Microsoft's token response that the basic `oauth2` response drops.
#[derive(Clone, Serialize, Deserialize)]
pub struct MicrosoftTokenFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_expires_in: Option<u64>,
}

impl fmt::Debug for MicrosoftTokenFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MicrosoftTokenFields")
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .field("ext_expires_in", &self.ext_expires_in)
            .finish()
    }
}

impl ExtraTokenFields for MicrosoftTokenFields {}

/// Microsoft's token response.
pub type MicrosoftTokenResponse = StandardTokenResponse<MicrosoftTokenFields, BasicTokenType>;

/// An error from Microsoft, from the callback or the token endpoint. Branch on `error`; the
/// AADSTS `codes` only refine the hint shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MicrosoftError {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_codes: Vec<u32>,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
}

impl MicrosoftError {
    /// From the `error` and `error_description` of a callback; the AADSTS code is parsed
    /// from the description, where Microsoft puts it.
    pub fn from_callback(error: &str, description: Option<&str>) -> Self {
        Self {
            error: error.to_owned(),
            error_description: description.map(str::to_owned),
            error_codes: description.and_then(aadsts_code).into_iter().collect(),
            trace_id: None,
            correlation_id: None,
        }
    }

    /// True if any of the AADSTS codes is `code`.
    pub fn has_code(&self, code: u32) -> bool {
        self.error_codes.contains(&code)
    }
}

impl fmt::Display for MicrosoftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if !self.error_codes.is_empty() {
            write!(f, " (AADSTS{:?})", self.error_codes)?;
        }
        if let Some(trace) = &self.trace_id {
            write!(f, " trace_id={trace}")?;
        }
        Ok(())
    }
}

impl ErrorResponse for MicrosoftError {}

/// The first `AADSTS<digits>` in a description.
pub(crate) fn aadsts_code(description: &str) -> Option<u32> {
    let rest = &description[description.find("AADSTS")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).take(9).collect();
    digits.parse().ok()
}

type MicrosoftOAuthClient = oauth2::Client<
    MicrosoftError,
    MicrosoftTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// Why the code exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Microsoft refused the request (`invalid_grant`, `invalid_client`, …).
    #[error("token endpoint refused the request: {0}")]
    Rejected(Box<MicrosoftError>),
    /// Microsoft could not be reached, timed out or failed (5xx).
    #[error("token endpoint unavailable")]
    Unavailable(#[source] HttpError),
    /// Microsoft answered with something that is not a token response. The body is dropped:
    /// it may hold tokens.
    #[error("token endpoint answered with an unreadable response")]
    Malformed,
    /// The response lacks what the flow needs (an id_token with `tid` and `oid`).
    #[error("token response is incomplete: {0}")]
    Incomplete(&'static str),
}

impl TokenError {
    /// True when the client secret was refused (invalid or expired).
    pub fn is_invalid_client(&self) -> bool {
        matches!(self, TokenError::Rejected(e) if e.error == "invalid_client")
    }

    /// True when the grant itself is dead (`invalid_grant`: expired, revoked, or a policy
    /// demands a new sign-in); retrying cannot help, the user must sign in again.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, TokenError::Rejected(e) if e.error == "invalid_grant" || e.error == "interaction_required")
    }

    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Unavailable(_) => true,
            TokenError::Rejected(e) => {
                e.error == "temporarily_unavailable" || e.error == "server_error"
            }
            TokenError::Malformed | TokenError::Incomplete(_) => false,
        }
    }
}

/// The identity claims we read from the id_token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IdClaims {
    pub tid: String,
    pub oid: String,
    pub aud: String,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

impl IdClaims {
    /// Personal Microsoft accounts live in one fixed tenant and have no organization.
    pub fn is_personal_account(&self) -> bool {
        self.tid.eq_ignore_ascii_case(PERSONAL_ACCOUNT_TENANT)
    }
}

/// The longest access-token lifetime taken at its word. Microsoft issues 60 to 90 minutes
/// (up to 28 hours with continuous access evaluation); a longer `expires_in` is clamped, so
/// an absurd answer can neither overflow a date nor keep a token "valid" for years.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(2 * 24 * 3600);

/// When a token issued at `now` with `expires_in` expires (`now` when Microsoft gave none).
pub fn expiry_after(
    now: time::OffsetDateTime,
    expires_in: Option<Duration>,
) -> time::OffsetDateTime {
    expires_in.map_or(now, |d| now + d.min(MAX_TOKEN_LIFETIME))
}

/// Tokens and identity from a successful code exchange.
#[derive(Debug)]
pub struct Tokens {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub token_type: String,
    pub expires_in: Option<Duration>,
    pub claims: IdClaims,
}

/// Tokens from a refresh. Microsoft normally rotates the refresh token; when a response
/// carries none, the caller keeps the one it has.
#[derive(Debug)]
pub struct Refreshed {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub expires_in: Option<Duration>,
}

/// A Graph read failed.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("Graph request failed")]
    Unavailable(#[source] HttpError),
    #[error("Graph answered HTTP {0}")]
    Status(u16),
    #[error("Graph answered with an unreadable response")]
    Malformed(#[source] serde_json::Error),
    /// The token endpoint issued an access token that cannot be sent in a header.
    #[error("the access token is not a valid header value")]
    UnusableToken,
}

/// The user, from Graph `/v1.0/me`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct GraphUser {
    pub id: Option<String>,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub user_principal_name: Option<String>,
    pub mail: Option<String>,
    pub preferred_language: Option<String>,
    pub mobile_phone: Option<String>,
}

/// The user's organization, from Graph `/v1.0/organization`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct GraphOrganization {
    pub id: Option<String>,
    pub display_name: Option<String>,
    pub tenant_type: Option<String>,
}

#[derive(Deserialize)]
struct OrganizationList {
    #[serde(default)]
    value: Vec<GraphOrganization>,
}

/// The app's endpoints and request parameters, validated once at init. Enough to send a
/// browser to Microsoft; makes no HTTP call itself (so the start function needs no client).
#[derive(Debug, Clone)]
pub struct Endpoints {
    client_id: ClientId,
    auth_url: AuthUrl,
    token_url: TokenUrl,
    redirect_url: RedirectUrl,
    scopes: Vec<Scope>,
    graph_url: Url,
}

impl Endpoints {
    pub fn new(config: &Config) -> Self {
        Self {
            client_id: config.client_id.clone(),
            auth_url: config.authorize_endpoint(),
            token_url: config.token_endpoint(),
            redirect_url: config.redirect_url(),
            scopes: config.scopes.iter().cloned().map(Scope::new).collect(),
            graph_url: config.graph_url.clone(),
        }
    }

    fn oauth(&self, secret: Option<&SecretString>) -> MicrosoftOAuthClient {
        let client = oauth2::Client::new(self.client_id.clone())
            .set_auth_uri(self.auth_url.clone())
            .set_token_uri(self.token_url.clone())
            .set_redirect_uri(self.redirect_url.clone())
            // MSAL sends the secret in the body; Basic auth with URL-encoded secrets is a known
            // source of `invalid_client` for secrets with special characters.
            .set_auth_type(AuthType::RequestBody);
        match secret {
            Some(s) => client.set_client_secret(ClientSecret::new(s.expose_secret().to_owned())),
            None => client,
        }
    }

    /// The URL the browser is sent to, with `state` and the PKCE challenge of `secrets`.
    pub fn authorize_url(&self, secrets: &FlowSecrets) -> Url {
        let state = secrets.state.clone();
        let (url, _) = self
            .oauth(None)
            .authorize_url(move || state)
            .add_scopes(self.scopes.iter().cloned())
            .set_pkce_challenge(secrets.pkce_challenge.clone())
            .add_extra_param("response_mode", "query")
            .add_extra_param("prompt", "select_account")
            .url();
        url
    }
}

/// Client of the token endpoint and Graph, built once per instance.
#[derive(Debug, Clone)]
pub struct Microsoft {
    endpoints: Endpoints,
    http: Arc<dyn Transport>,
}

impl Microsoft {
    pub fn new(endpoints: Endpoints, http: reqwest::Client) -> Self {
        Self::with_transport(endpoints, Arc::new(http))
    }

    /// A client whose requests go through `http` (benchmarks answer in-process).
    pub fn with_transport(endpoints: Endpoints, http: Arc<dyn Transport>) -> Self {
        Self { endpoints, http }
    }

    /// The endpoints this client talks to.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Redeems an authorization code with its PKCE verifier and the client secret.
    pub async fn exchange_code(
        &self,
        code: AuthorizationCode,
        verifier: PkceCodeVerifier,
        client_secret: &SecretString,
    ) -> Result<Tokens, TokenError> {
        let response = self
            .endpoints
            .oauth(Some(client_secret))
            .exchange_code(code)
            .set_pkce_verifier(verifier)
            .request_async(&OAuthHttp(self.http.as_ref()))
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(err) => TokenError::Rejected(Box::new(err)),
                RequestTokenError::Request(err) => TokenError::Unavailable(err),
                RequestTokenError::Parse(_, _) | RequestTokenError::Other(_) => {
                    TokenError::Malformed
                }
            })?;
        let id_token = response
            .extra_fields()
            .id_token
            .as_deref()
            .ok_or(TokenError::Incomplete("no id_token"))?;
        let claims = read_id_token(id_token)?;
        if claims.aud != *self.endpoints.client_id {
            return Err(TokenError::Incomplete("id_token was issued for another application"));
        }
        Ok(Tokens {
            access_token: response.access_token().clone(),
            refresh_token: response.refresh_token().cloned(),
            token_type: "Bearer".to_owned(),
            expires_in: response.expires_in(),
            claims,
        })
    }

    /// Redeems a refresh token for new tokens.
    pub async fn refresh(
        &self,
        refresh_token: &RefreshToken,
        client_secret: &SecretString,
    ) -> Result<Refreshed, TokenError> {
        let response = self
            .endpoints
            .oauth(Some(client_secret))
            .exchange_refresh_token(refresh_token)
            // Microsoft's v2 endpoint documents `scope` as required on a refresh: the same
            // scopes the sign-in asked for.
            .add_scopes(self.endpoints.scopes.iter().cloned())
            .request_async(&OAuthHttp(self.http.as_ref()))
            .await
            .map_err(token_error)?;
        Ok(Refreshed {
            access_token: response.access_token().clone(),
            refresh_token: response.refresh_token().cloned(),
            expires_in: response.expires_in(),
        })
    }

    /// Graph `/v1.0/me`.
    pub async fn me(&self, token: &AccessToken) -> Result<GraphUser, GraphError> {
        self.graph_get(token, "me").await
    }

    /// Graph `/v1.0/organization`; `None` when it lists nothing.
    pub async fn organization(
        &self,
        token: &AccessToken,
    ) -> Result<Option<GraphOrganization>, GraphError> {
        let list: OrganizationList = self.graph_get(token, "organization").await?;
        Ok(list.value.into_iter().next())
    }

    async fn graph_get<T: serde::de::DeserializeOwned>(
        &self,
        token: &AccessToken,
        resource: &str,
    ) -> Result<T, GraphError> {
        let mut url = self.endpoints.graph_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push("v1.0").push(resource);
        }
        let mut bearer = http::HeaderValue::try_from(format!("Bearer {}", token.secret()))
            .map_err(|_| GraphError::UnusableToken)?;
        bearer.set_sensitive(true);
        let request = http::Request::get(url.as_str())
            .header(http::header::AUTHORIZATION, bearer)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|_| GraphError::UnusableToken)?;
        let response = self.http.send(request).await.map_err(GraphError::Unavailable)?;
        let status = response.status();
        if !status.is_success() {
            return Err(GraphError::Status(status.as_u16()));
        }
        let body = response.into_body();
        serde_json::from_slice(&body).map_err(GraphError::Malformed)
    }
}

fn token_error(e: RequestTokenError<HttpError, MicrosoftError>) -> TokenError {
    match e {
        RequestTokenError::ServerResponse(err) => TokenError::Rejected(Box::new(err)),
        RequestTokenError::Request(err) => TokenError::Unavailable(err),
        // The body of an unreadable answer is dropped here: it may hold tokens.
        RequestTokenError::Parse(_, _) | RequestTokenError::Other(_) => TokenError::Malformed,
    }
}

/// Reads the id_token's claims. Its signature is not checked: it came straight from the
/// token endpoint over TLS, which OpenID Connect Core §3.1.3.7 accepts in place of one.
pub(crate) fn read_id_token(id_token: &str) -> Result<IdClaims, TokenError> {
    let data = jsonwebtoken::dangerous::insecure_decode::<IdClaims>(id_token)
        .map_err(|_| TokenError::Incomplete("id_token is unreadable or lacks tid/oid"))?;
    let claims = data.claims;
    if claims.tid.is_empty() || claims.oid.is_empty() {
        return Err(TokenError::Incomplete("id_token lacks tid/oid"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_token_lifetime_is_clamped_not_an_overflow() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        assert_eq!(expiry_after(now, None), now);
        assert_eq!(
            expiry_after(now, Some(Duration::from_secs(3599))).unix_timestamp(),
            1_800_003_599
        );
        let clamped = expiry_after(now, Some(Duration::from_secs(u64::MAX)));
        assert_eq!(clamped, now + MAX_TOKEN_LIFETIME);
    }

    #[test]
    fn aadsts_codes_are_read_from_descriptions() {
        assert_eq!(aadsts_code("AADSTS65004: User declined to consent."), Some(65004));
        assert_eq!(aadsts_code("xx AADSTS50011: The redirect URI"), Some(50011));
        assert_eq!(aadsts_code("no code here"), None);
        assert_eq!(aadsts_code("AADSTS"), None);
        assert_eq!(aadsts_code("AADSTS99999999999999"), Some(999_999_999));
    }

    #[test]
    fn callback_errors_carry_their_code() {
        let e = MicrosoftError::from_callback("access_denied", Some("AADSTS65004: declined"));
        assert!(e.has_code(65004));
        assert_eq!(e.to_string(), "access_denied (AADSTS[65004])");
    }

    #[test]
    fn token_errors_parse_microsoft_json() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215],"timestamp":"2026-01-01 00:00:00Z","trace_id":"t","correlation_id":"c"}"#;
        let e: MicrosoftError = serde_json::from_str(body).unwrap();
        assert!(e.has_code(7_000_215));
        assert!(TokenError::Rejected(Box::new(e)).is_invalid_client());
    }

    #[test]
    fn id_token_claims_are_read_without_a_signature_check() {
        use base64::Engine as _;
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256","typ":"JWT"}"#),
            enc(&format!(
                r#"{{"tid":"{PERSONAL_ACCOUNT_TENANT}","oid":"o1","aud":"app","preferred_username":"sam@outlook.com"}}"#
            ))
        );
        let claims = read_id_token(&token).unwrap();
        assert!(claims.is_personal_account());
        assert_eq!(claims.preferred_username.as_deref(), Some("sam@outlook.com"));
        assert!(read_id_token("not-a-jwt").is_err());
        let no_oid = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256"}"#),
            enc(r#"{"tid":"t","oid":"","aud":"a"}"#)
        );
        assert!(read_id_token(&no_oid).is_err());
    }
}
