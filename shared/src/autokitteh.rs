//! AutoKitteh's API, as its own web UI and CLI use it: Connect RPC with JSON bodies on the
//! API host, authorized with the user's session (the `ak_user_session` cookie's value as a
//! Bearer token) or an API token.
//!
//! Only the calls the flow needs: who is signed in, which connection this is, and writing
//! (and reading back) the connection's vars.

use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use url::Url;

use crate::domain::ConnectionId;
use crate::http::{HttpError, Transport};

/// The session cookie AutoKitteh sets on its API host; its value is a Bearer token.
pub const SESSION_COOKIE: &str = "ak_user_session";
/// The companion cookie AutoKitteh requires next to the session (`true`).
pub const LOGGED_IN_COOKIE: &str = "ak_logged_in";
/// Longest session cookie we read (AutoKitteh's JWTs are a few hundred bytes).
pub const MAX_SESSION_LEN: usize = 4096;
/// AutoKitteh's limit on one var's value, in bytes of plaintext.
pub const MAX_VAR_VALUE_LEN: usize = 8092;
/// AutoKitteh's limit on the number of vars of one connection.
pub const MAX_VARS_PER_CONNECTION: usize = 64;

const WHO_AM_I: &str = "autokitteh.auth.v1.AuthService/WhoAmI";
const CONNECTIONS_GET: &str = "autokitteh.connections.v1.ConnectionsService/Get";
const VARS_SET: &str = "autokitteh.vars.v1.VarsService/Set";
const VARS_GET: &str = "autokitteh.vars.v1.VarsService/Get";
const VARS_DELETE: &str = "autokitteh.vars.v1.VarsService/Delete";

/// The var holding the access token.
pub const ACCESS_TOKEN: &str = "oauth_access_token";
/// The vars holding the tokens: without `oauth_access_token` AutoKitteh reports a Microsoft
/// connection as needing initialisation.
pub const TOKEN_VARS: [&str; 2] = [ACCESS_TOKEN, "oauth_refresh_token"];
/// What a disconnect deletes: every var the sign-in wrote but `auth_type`, which names the
/// app the user chose (a private app's `oauthPrivate` must survive a disconnect; without
/// tokens AutoKitteh shows the connection as needing initialisation either way).
pub const DISCONNECT_VARS: [&str; 15] = [
    ACCESS_TOKEN,
    "oauth_refresh_token",
    "oauth_token_type",
    "oauth_expiry",
    "user_principal_name",
    "user_id",
    "user_display_name",
    "user_surname",
    "user_given_name",
    "user_language",
    "user_mail",
    "user_mobile_phone",
    "org_id",
    "org_display_name",
    "org_tenant_type",
];

/// The AutoKitteh integrations this flow connects, told apart by the start path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integration {
    Microsoft,
    MicrosoftTeams,
}

impl Integration {
    /// AutoKitteh's (deterministic) integration id.
    pub fn id(self) -> &'static str {
        match self {
            Integration::Microsoft => "int_3kthm1cr0s8eb9d7769224edc0",
            Integration::MicrosoftTeams => "int_3kthm1cr0s72ae4dc301f284d7",
        }
    }

    /// AutoKitteh's name of the integration.
    pub fn name(self) -> &'static str {
        match self {
            Integration::Microsoft => "microsoft",
            Integration::MicrosoftTeams => "microsoft_teams",
        }
    }

    /// The integration a start path belongs to (`…/oauth/start/microsoft[_teams]`, and the
    /// web UI's `…/oauth/start/microsoft_microsoft_teams`).
    pub fn from_start_path(path: &str) -> Self {
        let path = path.trim_end_matches('/');
        if path.ends_with(crate::config::START_PATH_TEAMS)
            || path.ends_with(crate::config::START_PATH_TEAMS_WEB_UI)
        {
            Integration::MicrosoftTeams
        } else {
            Integration::Microsoft
        }
    }
}

/// An AutoKitteh credential: a user's session or an API token. Never logged, stored or sent
/// anywhere but the AutoKitteh API.
#[derive(Clone)]
pub struct AkToken(SecretString);

impl AkToken {
    /// A token as read from a cookie or a secret: printable ASCII only (it goes in a header).
    pub fn new(value: &str) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= MAX_SESSION_LEN
            && value.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Self(SecretString::from(value.to_owned())))
    }
}

impl fmt::Debug for AkToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AkToken([redacted])")
    }
}

/// The signed-in AutoKitteh user (`WhoAmI`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AkUser {
    pub user_id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// An AutoKitteh connection (`ConnectionsService/Get`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AkConnection {
    pub connection_id: String,
    #[serde(default)]
    pub integration_id: String,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub org_id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: Option<AkStatus>,
}

/// A connection's status as AutoKitteh computes it from its vars.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AkStatus {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// One connection var. Values of secret vars are redacted in `Debug`.
#[derive(Clone)]
pub struct Var {
    pub name: String,
    pub value: SecretString,
    pub is_secret: bool,
}

impl Var {
    pub fn plain(name: &str, value: impl Into<String>) -> Self {
        Self { name: name.to_owned(), value: SecretString::from(value.into()), is_secret: false }
    }

    pub fn secret(name: &str, value: impl Into<String>) -> Self {
        Self { name: name.to_owned(), value: SecretString::from(value.into()), is_secret: true }
    }
}

impl fmt::Debug for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if self.is_secret { "[redacted]" } else { self.value.expose_secret() };
        write!(f, "Var({}={value:?})", self.name)
    }
}

/// A set of vars AutoKitteh would refuse. Checked before anything is written, so nothing is
/// truncated or half-saved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarLimit {
    #[error("var {name} is {len} bytes long; AutoKitteh stores at most {MAX_VAR_VALUE_LEN}")]
    TooLong { name: String, len: usize },
    #[error("{count} vars; AutoKitteh stores at most {MAX_VARS_PER_CONNECTION} per connection")]
    TooMany { count: usize },
    #[error("var name {name:?} is not one AutoKitteh accepts")]
    BadName { name: String },
}

/// Checks `vars` against AutoKitteh's rules for `Set`.
pub fn check_vars(vars: &[Var]) -> Result<(), VarLimit> {
    if vars.len() > MAX_VARS_PER_CONNECTION {
        return Err(VarLimit::TooMany { count: vars.len() });
    }
    for var in vars {
        let mut bytes = var.name.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(VarLimit::BadName { name: var.name.clone() });
        }
        let len = var.value.expose_secret().len();
        if len > MAX_VAR_VALUE_LEN {
            return Err(VarLimit::TooLong { name: var.name.clone(), len });
        }
    }
    Ok(())
}

/// A call to AutoKitteh failed.
#[derive(Debug, thiserror::Error)]
pub enum AkError {
    /// Plain-text 401: the session or token is not (or no longer) valid.
    #[error("AutoKitteh refused the credentials ({0})")]
    Unauthenticated(String),
    /// A Connect error (`{"code","message"}`).
    #[error("AutoKitteh answered HTTP {status} {code}: {message}")]
    Rpc { status: u16, code: String, message: String },
    /// No answer in time, or the connection failed.
    #[error("AutoKitteh did not answer")]
    Unavailable(#[source] HttpError),
    /// An answer that is not AutoKitteh's.
    #[error("AutoKitteh answered HTTP {status} with an unreadable body")]
    Unexpected { status: u16 },
}

impl AkError {
    /// True for outages: no answer, or a server-side error other than a refusal.
    pub fn is_outage(&self) -> bool {
        match self {
            AkError::Unavailable(_) => true,
            AkError::Rpc { status, .. } | AkError::Unexpected { status } => *status >= 500,
            AkError::Unauthenticated(_) => false,
        }
    }

    /// True when AutoKitteh refused this user the operation.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, AkError::Rpc { code, .. } if code == "permission_denied" || code == "not_found")
    }
}

#[derive(Deserialize)]
struct ConnectError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct WhoAmIResponse {
    user: Option<AkUser>,
}

#[derive(Deserialize)]
struct GetConnectionResponse {
    connection: Option<AkConnection>,
}

#[derive(Serialize)]
struct WireVar<'a> {
    scope_id: &'a str,
    name: &'a str,
    value: &'a str,
    is_secret: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadVar {
    name: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    is_secret: bool,
}

#[derive(Deserialize)]
struct GetVarsResponse {
    #[serde(default)]
    vars: Vec<ReadVar>,
}

/// Client of one AutoKitteh API host, built once per instance.
#[derive(Debug, Clone)]
pub struct AutoKitteh {
    base: Url,
    http: Arc<dyn Transport>,
}

impl AutoKitteh {
    pub fn new(base: Url, http: Arc<dyn Transport>) -> Self {
        Self { base, http }
    }

    /// The API host, e.g. `https://api.autokitteh.cloud`.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `AuthService/WhoAmI`: the user the credential belongs to.
    pub async fn who_am_i(&self, token: &AkToken) -> Result<AkUser, AkError> {
        let response: WhoAmIResponse = self.call(WHO_AM_I, token, &serde_json::json!({})).await?;
        response.user.filter(|u| !u.user_id.is_empty()).ok_or(AkError::Unexpected { status: 200 })
    }

    /// `ConnectionsService/Get`: `None` both when the connection does not exist and when this
    /// user may not see it (AutoKitteh answers both the same).
    pub async fn connection(
        &self,
        token: &AkToken,
        cid: &ConnectionId,
    ) -> Result<Option<AkConnection>, AkError> {
        let response: GetConnectionResponse = self
            .call(CONNECTIONS_GET, token, &serde_json::json!({ "connection_id": cid.as_str() }))
            .await?;
        Ok(response.connection.filter(|c| c.connection_id == cid.as_str()))
    }

    /// `VarsService/Set`: upserts `vars` on the connection. Safe to repeat.
    pub async fn set_vars(
        &self,
        token: &AkToken,
        cid: &ConnectionId,
        vars: &[Var],
    ) -> Result<(), AkError> {
        let wire: Vec<WireVar<'_>> = vars
            .iter()
            .map(|v| WireVar {
                scope_id: cid.as_str(),
                name: &v.name,
                value: v.value.expose_secret(),
                is_secret: v.is_secret,
            })
            .collect();
        let _: serde_json::Value =
            self.call(VARS_SET, token, &serde_json::json!({ "vars": wire })).await?;
        Ok(())
    }

    /// `VarsService/Set` of vars that include `oauth_access_token = access_token`, the way
    /// AutoKitteh asks its writers to: a `Set` answering a server error is repeated once;
    /// if the repeat fails too, the vars are read back and a stored `access_token` counts
    /// as written (AutoKitteh answers an error when it cannot recompute the connection's
    /// status after writing).
    pub async fn write_vars(
        &self,
        token: &AkToken,
        cid: &ConnectionId,
        vars: &[Var],
        access_token: &SecretString,
    ) -> Result<(), AkError> {
        let answered_error = |e: &AkError| matches!(e, AkError::Rpc { status: 500.., .. });
        match self.set_vars(token, cid, vars).await {
            Ok(()) => return Ok(()),
            Err(e) if answered_error(&e) => {
                tracing::warn!(cid = %cid, error = %crate::error::chain(&e), "AutoKitteh vars write failed; repeating it");
            }
            Err(e) => return Err(e),
        }
        match self.set_vars(token, cid, vars).await {
            Err(e) if answered_error(&e) => {
                match self.get_vars(token, cid, &[ACCESS_TOKEN]).await {
                    Ok(read) if holds_secret(&read, ACCESS_TOKEN, access_token) => {
                        tracing::warn!(cid = %cid, error = %crate::error::chain(&e), "AutoKitteh stored the vars but failed after writing them");
                        Ok(())
                    }
                    _ => Err(e),
                }
            }
            other => other,
        }
    }

    /// `VarsService/Delete` of `names` (never empty here: an empty list deletes every var,
    /// including ones the user set). Safe to repeat.
    pub async fn delete_vars(
        &self,
        token: &AkToken,
        cid: &ConnectionId,
        names: &[&str],
    ) -> Result<(), AkError> {
        if names.is_empty() {
            return Ok(());
        }
        let _: serde_json::Value = self
            .call(
                VARS_DELETE,
                token,
                &serde_json::json!({ "scope_id": cid.as_str(), "names": names }),
            )
            .await?;
        Ok(())
    }

    /// `VarsService/Get` of `names` (all vars when empty). Secret values come back readable.
    pub async fn get_vars(
        &self,
        token: &AkToken,
        cid: &ConnectionId,
        names: &[&str],
    ) -> Result<Vec<Var>, AkError> {
        let response: GetVarsResponse = self
            .call(VARS_GET, token, &serde_json::json!({ "scope_id": cid.as_str(), "names": names }))
            .await?;
        Ok(response
            .vars
            .into_iter()
            .map(|v| Var {
                name: v.name,
                value: SecretString::from(v.value),
                is_secret: v.is_secret,
            })
            .collect())
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        token: &AkToken,
        body: &serde_json::Value,
    ) -> Result<T, AkError> {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(method.split('/'));
        }
        let mut bearer = http::HeaderValue::try_from(format!("Bearer {}", token.0.expose_secret()))
            .map_err(|_| AkError::Unauthenticated("unusable credential".into()))?;
        bearer.set_sensitive(true);
        let body = serde_json::to_vec(body).map_err(|_| AkError::Unexpected { status: 0 })?;
        let request = http::Request::post(url.as_str())
            .header(http::header::AUTHORIZATION, bearer)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header("connect-protocol-version", "1")
            .body(body)
            .map_err(|_| AkError::Unexpected { status: 0 })?;
        let response = self.http.send(request).await.map_err(AkError::Unavailable)?;
        let status = response.status().as_u16();
        let body = response.into_body();
        if status == 401 {
            return Err(AkError::Unauthenticated(short_text(&body)));
        }
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_slice::<ConnectError>(&body) {
                Ok(e) if !e.code.is_empty() => AkError::Rpc {
                    status,
                    code: short_text(e.code.as_bytes()),
                    message: short_text(e.message.as_bytes()),
                },
                _ => AkError::Unexpected { status },
            });
        }
        serde_json::from_slice(&body).map_err(|_| AkError::Unexpected { status })
    }
}

/// At most 200 printable characters of an answer, for a log line.
fn short_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// True when the secret var `name` in `vars` holds exactly `expected` (compared in constant
/// time).
pub fn holds_secret(vars: &[Var], name: &str, expected: &SecretString) -> bool {
    vars.iter().any(|v| {
        v.name == name
            && bool::from(
                v.value.expose_secret().as_bytes().ct_eq(expected.expose_secret().as_bytes()),
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_paths_name_their_integration() {
        assert_eq!(Integration::from_start_path("/oauth/start/microsoft"), Integration::Microsoft);
        assert_eq!(
            Integration::from_start_path("/prod/oauth/start/microsoft_teams"),
            Integration::MicrosoftTeams
        );
        assert_eq!(
            Integration::from_start_path("/oauth/start/microsoft_microsoft_teams"),
            Integration::MicrosoftTeams
        );
        assert_eq!(
            Integration::from_start_path("/oauth/start/not_microsoft_teams"),
            Integration::Microsoft
        );
        assert_eq!(Integration::MicrosoftTeams.id(), "int_3kthm1cr0s72ae4dc301f284d7");
    }

    #[test]
    fn tokens_are_printable_ascii_and_redacted() {
        assert!(AkToken::new("").is_none());
        assert!(AkToken::new("a b").is_none());
        assert!(AkToken::new("é").is_none());
        assert!(AkToken::new(&"a".repeat(MAX_SESSION_LEN + 1)).is_none());
        let token = AkToken::new("eyJhbGciOi.x.y").unwrap();
        assert_eq!(format!("{token:?}"), "AkToken([redacted])");
    }

    #[test]
    fn secret_var_values_never_print() {
        let vars = [
            Var::secret("oauth_access_token", "tok-123"),
            Var::plain("oauth_token_type", "Bearer"),
        ];
        let shown = format!("{vars:?}");
        assert!(!shown.contains("tok-123"));
        assert!(shown.contains("Bearer"));
    }

    #[test]
    fn var_limits_are_checked_before_writing() {
        assert_eq!(check_vars(&[Var::plain("user_id", "x")]), Ok(()));
        assert_eq!(
            check_vars(&[Var::secret("oauth_access_token", "a".repeat(MAX_VAR_VALUE_LEN + 1))]),
            Err(VarLimit::TooLong {
                name: "oauth_access_token".into(),
                len: MAX_VAR_VALUE_LEN + 1
            })
        );
        assert!(check_vars(&[Var::plain("oauth_expiry", "a".repeat(MAX_VAR_VALUE_LEN))]).is_ok());
        let many: Vec<Var> =
            (0..=MAX_VARS_PER_CONNECTION).map(|i| Var::plain(&format!("v{i}"), "")).collect();
        assert_eq!(check_vars(&many), Err(VarLimit::TooMany { count: 65 }));
        assert!(matches!(check_vars(&[Var::plain("1x", "")]), Err(VarLimit::BadName { .. })));
        assert!(matches!(check_vars(&[Var::plain("a-b", "")]), Err(VarLimit::BadName { .. })));
    }

    #[test]
    fn outages_and_refusals_are_told_apart() {
        let rpc =
            |status, code: &str| AkError::Rpc { status, code: code.into(), message: String::new() };
        assert!(rpc(500, "unknown").is_outage());
        assert!(!rpc(403, "permission_denied").is_outage());
        assert!(rpc(403, "permission_denied").is_permission_denied());
        assert!(!AkError::Unauthenticated("invalid token".into()).is_outage());
        assert!(AkError::Unexpected { status: 502 }.is_outage());
    }

    #[test]
    fn holds_secret_compares_the_named_var() {
        let vars = [Var::secret("oauth_access_token", "abc")];
        assert!(holds_secret(&vars, "oauth_access_token", &SecretString::from("abc")));
        assert!(!holds_secret(&vars, "oauth_access_token", &SecretString::from("abd")));
        assert!(!holds_secret(&vars, "oauth_refresh_token", &SecretString::from("abc")));
    }
}
