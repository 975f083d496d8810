//! Typed configuration read once at init from the environment.
//!
//! The variable names are a contract shared with the SAM template, the README and the tests.

use std::time::Duration;

use oauth2::{AuthUrl, ClientId, RedirectUrl, TokenUrl};
use secrecy::SecretString;
use url::Url;

use crate::domain::Tenant;

pub const WEBHOOK_ADDRESS: &str = "WEBHOOK_ADDRESS";
pub const MICROSOFT_CLIENT_ID: &str = "MICROSOFT_CLIENT_ID";
pub const MICROSOFT_CLIENT_SECRET: &str = "MICROSOFT_CLIENT_SECRET";
pub const MICROSOFT_CLIENT_SECRET_ARN: &str = "MICROSOFT_CLIENT_SECRET_ARN";
pub const MICROSOFT_TENANT_ID: &str = "MICROSOFT_TENANT_ID";
pub const MICROSOFT_AUTHORITY_HOST: &str = "MICROSOFT_AUTHORITY_HOST";
pub const MICROSOFT_GRAPH_URL: &str = "MICROSOFT_GRAPH_URL";
pub const MICROSOFT_SCOPES: &str = "MICROSOFT_SCOPES";
pub const OAUTH_TABLE_NAME: &str = "OAUTH_TABLE_NAME";
pub const TOKEN_KMS_KEY_ID: &str = "TOKEN_KMS_KEY_ID";
pub const KEY_SHARES_TABLE_NAME: &str = "KEY_SHARES_TABLE_NAME";
pub const START_LINK_KEY: &str = "START_LINK_KEY";
pub const START_LINK_KEY_ARN: &str = "START_LINK_KEY_ARN";
pub const EVENT_BUS_NAME: &str = "EVENT_BUS_NAME";
pub const METRICS_NAMESPACE: &str = "METRICS_NAMESPACE";
pub const MICROSOFT_CLIENT_AUTH: &str = "MICROSOFT_CLIENT_AUTH";
pub const AUDIT_BUS_NAME: &str = "AUDIT_BUS_NAME";
pub const TOKEN_REFRESH_MARGIN_SECONDS: &str = "TOKEN_REFRESH_MARGIN_SECONDS";
pub const AUTOKITTEH_API_URL: &str = "AUTOKITTEH_API_URL";
pub const AUTOKITTEH_UI_URL: &str = "AUTOKITTEH_UI_URL";
pub const AUTOKITTEH_API_TOKEN: &str = "AUTOKITTEH_API_TOKEN";
pub const AUTOKITTEH_DASHBOARD_URL: &str = "AUTOKITTEH_DASHBOARD_URL";
pub const AUTOKITTEH_API_TOKEN_ARN: &str = "AUTOKITTEH_API_TOKEN_ARN";

/// Microsoft's global authority; national clouds and tests override it.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Microsoft Graph in the global cloud.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";
/// Default of `TOKEN_REFRESH_MARGIN_SECONDS`.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// The scopes AutoKitteh's Microsoft integration requests by default.
pub const DEFAULT_SCOPES: &str = "Channel.Create Channel.Delete.All ChannelMessage.Read.All \
    ChannelMessage.ReadWrite ChannelMessage.Send ChannelSettings.ReadWrite.All Chat.Create \
    Chat.ManageDeletion.All Chat.ReadWrite.All ChatMember.ReadWrite Team.ReadBasic.All \
    TeamMember.ReadWrite.All email offline_access openid profile User.Read User.ReadBasic.All";
/// Scopes the flow cannot work without: a refresh token, an id_token with the user's name,
/// and Graph `/me`.
const REQUIRED_SCOPES: [&str; 4] = ["openid", "profile", "offline_access", "User.Read"];

/// Path of the start function on the public address.
pub const START_PATH: &str = "/oauth/start/microsoft";
/// Start path of AutoKitteh's Microsoft Teams integration (same flow, another integration).
pub const START_PATH_TEAMS: &str = "/oauth/start/microsoft_teams";
/// The Teams start path AutoKitteh's web UI builds when a Teams connection is created
/// (`auth_scopes=microsoft_teams`, which AutoKitteh's `/microsoft/save` appends after
/// `/oauth/start/microsoft_`): the same start as [`START_PATH_TEAMS`].
pub const START_PATH_TEAMS_WEB_UI: &str = "/oauth/start/microsoft_microsoft_teams";
/// AutoKitteh's own Microsoft finish handlers, which take a token blob in the web address and
/// write it into any connection named: the start function answers them with a refusal page,
/// so that behind the front door nobody can write tokens through a link.
pub const AUTOKITTEH_TOKEN_URL_PATHS: [&str; 2] = ["/microsoft/oauth", "/microsoft_teams/oauth"];
/// Every path the start function answers on the public address.
pub const START_FUNCTION_PATHS: [&str; 6] = [
    START_PATH,
    START_PATH_TEAMS,
    START_PATH_TEAMS_WEB_UI,
    ADMIN_CONSENT_PATH,
    AUTOKITTEH_TOKEN_URL_PATHS[0],
    AUTOKITTEH_TOKEN_URL_PATHS[1],
];
/// Every path of the public address that goes to the functions (the rest of the AutoKitteh
/// API host goes to AutoKitteh).
pub const FUNCTION_PATHS: [&str; 7] = [
    START_FUNCTION_PATHS[0],
    START_FUNCTION_PATHS[1],
    START_FUNCTION_PATHS[2],
    START_FUNCTION_PATHS[3],
    START_FUNCTION_PATHS[4],
    START_FUNCTION_PATHS[5],
    REDIRECT_PATH,
];
/// Path of the redirect function on the public address; registered in Azure.
pub const REDIRECT_PATH: &str = "/oauth/redirect/microsoft";
/// Where an administrator is sent to grant a connection's app tenant-wide consent.
pub const ADMIN_CONSENT_PATH: &str = "/oauth/adminconsent/microsoft";

/// A configuration variable that is missing or invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var} {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(var: &'static str, problem: impl Into<String>) -> Self {
        Self { var, problem: problem.into() }
    }
}

/// Where a secret comes from: the environment (local runs) or Secrets Manager.
#[derive(Debug, Clone)]
pub enum SecretSource {
    Value(SecretString),
    SecretsManager { arn: String },
}

/// The public address the functions are served on, e.g. `https://api.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicAddress(Url);

impl PublicAddress {
    /// Parses `WEBHOOK_ADDRESS`: a bare host (with optional port) means HTTPS; `http://` is
    /// accepted only for loopback hosts so local runs work without TLS.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim().trim_end_matches('/');
        if value.is_empty() {
            return Err("is empty".into());
        }
        let with_scheme =
            if value.contains("://") { value.to_owned() } else { format!("https://{value}") };
        let url = Url::parse(&with_scheme).map_err(|e| format!("is not a host name ({e})"))?;
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err("must be just the address, without a path".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials".into());
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => {
                return Err("may use http:// only for localhost; use the bare host name".into());
            }
            other => return Err(format!("has unsupported scheme {other}")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("has no host".into());
        }
        Ok(Self(url))
    }

    /// The exact redirect URI registered in Azure.
    pub fn redirect_uri(&self) -> Url {
        self.join(REDIRECT_PATH)
    }

    /// The start URL the platform links to.
    pub fn start_uri(&self) -> Url {
        self.join(START_PATH)
    }

    /// Scheme and host, e.g. `https://api.example.com`.
    pub fn origin(&self) -> String {
        self.0.origin().ascii_serialization()
    }

    /// True for a loopback host (local runs over plain HTTP).
    pub fn is_loopback(&self) -> bool {
        is_loopback(&self.0)
    }

    fn join(&self, path: &str) -> Url {
        let mut url = self.0.clone();
        url.set_path(path);
        url
    }
}

/// `AWS_SAM_LOCAL`, which SAM CLI sets (to `true`) in the containers of `sam local` and
/// Lambda never sets.
pub const AWS_SAM_LOCAL: &str = "AWS_SAM_LOCAL";

/// Under `sam local` the functions run in containers and reach the local stand-ins on the
/// Docker bridge's private address, over plain HTTP like loopback.
fn is_sam_local_peer(lookup: &dyn Fn(&str) -> Option<String>, url: &Url) -> bool {
    lookup(AWS_SAM_LOCAL).is_some_and(|v| v.trim() == "true")
        && matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_private())
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Everything both functions share, parsed and validated once.
#[derive(Debug, Clone)]
pub struct Config {
    pub public_address: PublicAddress,
    pub client_id: ClientId,
    pub tenant: Tenant,
    pub authority_host: Url,
    pub graph_url: Url,
    pub scopes: Vec<String>,
    pub table_name: String,
    /// Timeout of every outbound HTTP call to Microsoft.
    pub http_timeout: Duration,
    /// How long a started flow may take before its state expires.
    pub state_ttl: Duration,
    /// Tokens expiring within this margin are refreshed before they are served; a sign-in
    /// schedules its first refresh by it too (`TOKEN_REFRESH_MARGIN_SECONDS`).
    pub refresh_margin: Duration,
    /// Set when the functions work inside an AutoKitteh deployment (`AUTOKITTEH_API_URL`).
    pub autokitteh: Option<AutoKittehConfig>,
    /// The host of AutoKitteh's dashboard (`AUTOKITTEH_DASHBOARD_URL`), where `origin=dash`
    /// sign-ins finish.
    pub dashboard_url: Option<Url>,
}

/// Where the AutoKitteh deployment the functions work in is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoKittehConfig {
    /// The API host the Connect RPCs go to, e.g. `https://api.autokitteh.cloud`.
    pub api_url: Url,
    /// Where a user signs in to AutoKitteh (its web UI); pages link there.
    pub ui_url: Url,
}

/// The part of the product that reads a configuration. Each reads only the variables it
/// uses (the others keep their defaults), so a deployment gives every function exactly its
/// own variables and the template test can hold it to that in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The start function: sends browsers to Microsoft with the deployment's scopes.
    Start,
    /// The redirect function: finishes sign-ins and admin consents.
    Redirect,
    /// The connection API: serves and refreshes tokens, sets own apps.
    ConnectionApi,
    /// The scheduled refresher.
    Refresher,
    /// `akoauth`, an operator's tool.
    Operator,
}

impl Role {
    /// Whether this role reads `var` (of the variables [`Config`] holds).
    pub fn reads(self, var: &str) -> bool {
        use Role::*;
        match var {
            // Only a sign-in's start asks for scopes; refreshes ask for what was granted.
            MICROSOFT_SCOPES => self == Start,
            // Refreshes are scheduled by it: everything but the start.
            TOKEN_REFRESH_MARGIN_SECONDS => self != Start,
            // Pages link to AutoKitteh's UI and dashboard; the other roles show no page.
            AUTOKITTEH_UI_URL => matches!(self, Start | Redirect),
            AUTOKITTEH_DASHBOARD_URL => self == Redirect,
            _ => true,
        }
    }
}

impl Config {
    /// Reads the configuration from the process environment, as `role` needs it.
    pub fn from_env(role: Role) -> Result<Self, ConfigError> {
        Self::for_role(role, &env_lookup)
    }

    /// Reads the configuration `role` needs through `lookup`, which returns a variable's
    /// value if set; the variables `role` does not read keep their defaults.
    pub fn for_role(
        role: Role,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::read(&|var: &str| if role.reads(var) { lookup(var) } else { None })
    }

    /// Reads every variable through `lookup` (local runs and tests that serve all roles
    /// from one configuration).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::read(lookup)
    }

    fn read(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let public_address = PublicAddress::parse(&required(lookup, WEBHOOK_ADDRESS)?)
            .map_err(|p| ConfigError::new(WEBHOOK_ADDRESS, p))?;
        let client_id = required(lookup, MICROSOFT_CLIENT_ID)?;
        if client_id.len() > 128
            || !client_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(ConfigError::new(MICROSOFT_CLIENT_ID, "is not an application (client) id"));
        }
        let tenant = match optional(lookup, MICROSOFT_TENANT_ID) {
            Some(t) => t.parse().map_err(|p: &str| ConfigError::new(MICROSOFT_TENANT_ID, p))?,
            None => Tenant::default(),
        };
        let authority_host = service_url(lookup, MICROSOFT_AUTHORITY_HOST, DEFAULT_AUTHORITY_HOST)?;
        let graph_url = service_url(lookup, MICROSOFT_GRAPH_URL, DEFAULT_GRAPH_URL)?;
        let scopes =
            parse_scopes(optional(lookup, MICROSOFT_SCOPES).as_deref().unwrap_or(DEFAULT_SCOPES))
                .map_err(|p| ConfigError::new(MICROSOFT_SCOPES, p))?;
        let table_name = required(lookup, OAUTH_TABLE_NAME)?;
        let refresh_margin = match optional(lookup, TOKEN_REFRESH_MARGIN_SECONDS) {
            None => DEFAULT_REFRESH_MARGIN,
            Some(v) => {
                v.parse::<u64>().ok().filter(|s| *s <= 3000).map(Duration::from_secs).ok_or_else(
                    || {
                        ConfigError::new(
                            TOKEN_REFRESH_MARGIN_SECONDS,
                            "must be a number of seconds from 0 to 3000",
                        )
                    },
                )?
            }
        };
        let autokitteh = match optional(lookup, AUTOKITTEH_API_URL) {
            None => None,
            Some(_) => {
                let api_url = service_url(lookup, AUTOKITTEH_API_URL, "")?;
                let ui_url = match optional(lookup, AUTOKITTEH_UI_URL) {
                    Some(_) => service_url(lookup, AUTOKITTEH_UI_URL, "")?,
                    None => api_url.clone(),
                };
                Some(AutoKittehConfig { api_url, ui_url })
            }
        };
        let dashboard_url = match optional(lookup, AUTOKITTEH_DASHBOARD_URL) {
            Some(_) => Some(service_url(lookup, AUTOKITTEH_DASHBOARD_URL, "")?),
            None => None,
        };
        Ok(Self {
            public_address,
            client_id: ClientId::new(client_id),
            tenant,
            authority_host,
            graph_url,
            scopes,
            table_name,
            http_timeout: Duration::from_secs(10),
            state_ttl: Duration::from_secs(600),
            refresh_margin,
            autokitteh,
            dashboard_url,
        })
    }

    /// `{authority}/{tenant}/oauth2/v2.0/authorize`
    pub fn authorize_endpoint(&self) -> AuthUrl {
        AuthUrl::from_url(self.authority_path(&["oauth2", "v2.0", "authorize"]))
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`
    pub fn token_endpoint(&self) -> TokenUrl {
        TokenUrl::from_url(self.authority_path(&["oauth2", "v2.0", "token"]))
    }

    /// The exact redirect URI, as registered in Azure.
    pub fn redirect_url(&self) -> RedirectUrl {
        RedirectUrl::from_url(self.public_address.redirect_uri())
    }

    fn authority_path(&self, tail: &[&str]) -> Url {
        let mut url = self.authority_host.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(self.tenant.as_str()).extend(tail);
        }
        url
    }
}

/// Reads a secret given either as a value (`value_var`) or as a Secrets Manager ARN or name
/// (`arn_var`). Exactly one must be set.
pub fn secret_source(
    lookup: &dyn Fn(&str) -> Option<String>,
    value_var: &'static str,
    arn_var: &'static str,
) -> Result<SecretSource, ConfigError> {
    match (optional(lookup, value_var), optional(lookup, arn_var)) {
        (Some(_), Some(_)) => {
            Err(ConfigError::new(arn_var, format!("and {value_var} are both set; set one")))
        }
        (Some(value), None) => Ok(SecretSource::Value(SecretString::from(value))),
        // Secrets Manager also accepts a secret's name, which local runs use.
        (None, Some(arn)) => Ok(SecretSource::SecretsManager { arn }),
        (None, None) => Err(ConfigError::new(value_var, format!("is not set (nor {arn_var})"))),
    }
}

/// Reads a required variable: set and not blank.
pub fn required(
    lookup: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<String, ConfigError> {
    optional(lookup, var).ok_or_else(|| ConfigError::new(var, "is not set"))
}

fn optional(lookup: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    lookup(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// The process environment as a lookup function.
pub fn env_lookup(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

fn service_url(
    lookup: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
    default: &str,
) -> Result<Url, ConfigError> {
    let raw = optional(lookup, var).unwrap_or_else(|| default.to_owned());
    let url = Url::parse(raw.trim_end_matches('/'))
        .map_err(|e| ConfigError::new(var, format!("is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) || is_sam_local_peer(lookup, &url) => {}
        _ => {
            return Err(ConfigError::new(
                var,
                "must be an https:// URL (http:// only for localhost)",
            ));
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(var, "must not have a query or fragment"));
    }
    Ok(url)
}

fn parse_scopes(raw: &str) -> Result<Vec<String>, String> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in raw.split([' ', ',']).filter(|s| !s.is_empty()) {
        if !scope.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
            return Err(format!("has an invalid scope {scope:?}"));
        }
        if !scopes.iter().any(|s| s.eq_ignore_ascii_case(scope)) {
            scopes.push(scope.to_owned());
        }
    }
    for required in REQUIRED_SCOPES {
        if !scopes.iter().any(|s| s.eq_ignore_ascii_case(required)) {
            scopes.push(required.to_owned());
        }
    }
    Ok(scopes)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            (WEBHOOK_ADDRESS, "api.example.com"),
            (MICROSOFT_CLIENT_ID, "11111111-2222-3333-4444-555555555555"),
            (OAUTH_TABLE_NAME, "oauth"),
        ]
    }

    #[test]
    fn defaults_match_microsoft_and_autokitteh() {
        let config = Config::from_lookup(&lookup(&base())).unwrap();
        assert_eq!(
            config.authorize_endpoint().as_str(),
            "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
        );
        assert_eq!(
            config.token_endpoint().as_str(),
            "https://login.microsoftonline.com/common/oauth2/v2.0/token"
        );
        assert_eq!(
            config.redirect_url().as_str(),
            "https://api.example.com/oauth/redirect/microsoft"
        );
        assert_eq!(
            config.scopes.join(" "),
            DEFAULT_SCOPES.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }

    #[test]
    fn required_scopes_are_always_requested() {
        let mut vars = base();
        vars.push((MICROSOFT_SCOPES, "Mail.Read,Calendars.Read"));
        let config = Config::from_lookup(&lookup(&vars)).unwrap();
        assert_eq!(
            config.scopes,
            ["Mail.Read", "Calendars.Read", "openid", "profile", "offline_access", "User.Read"]
        );
    }

    #[test]
    fn tenant_and_authority_shape_the_endpoints() {
        let mut vars = base();
        vars.push((MICROSOFT_TENANT_ID, "72F988BF-86F1-41AF-91AB-2D7CD011DB47"));
        vars.push((MICROSOFT_AUTHORITY_HOST, "https://login.microsoftonline.us/"));
        let config = Config::from_lookup(&lookup(&vars)).unwrap();
        assert_eq!(
            config.token_endpoint().as_str(),
            "https://login.microsoftonline.us/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token"
        );
    }

    #[test]
    fn http_is_only_accepted_for_loopback() {
        assert_eq!(
            PublicAddress::parse("http://localhost:9000").unwrap().redirect_uri().as_str(),
            "http://localhost:9000/oauth/redirect/microsoft"
        );
        assert!(PublicAddress::parse("http://127.0.0.1:9000").is_ok());
        assert!(PublicAddress::parse("http://api.example.com").is_err());
        assert!(PublicAddress::parse("api.example.com/path").is_err());
        assert!(PublicAddress::parse("ftp://api.example.com").is_err());
    }

    #[test]
    fn each_role_reads_only_what_it_uses() {
        use std::cell::RefCell;
        let mut vars = base();
        vars.push((MICROSOFT_SCOPES, "Mail.Read"));
        vars.push((TOKEN_REFRESH_MARGIN_SECONDS, "60"));
        vars.push((AUTOKITTEH_API_URL, "https://api.autokitteh.example"));
        vars.push((AUTOKITTEH_UI_URL, "https://app.autokitteh.example"));
        vars.push((AUTOKITTEH_DASHBOARD_URL, "https://dash.autokitteh.example"));
        let all = lookup(&vars);
        let asked = |role: Role| {
            let asked = RefCell::new(Vec::new());
            let config = Config::for_role(role, &|k| {
                asked.borrow_mut().push(k.to_owned());
                all(k)
            })
            .unwrap();
            (config, asked.into_inner())
        };
        let (start, read) = asked(Role::Start);
        assert_eq!(start.scopes[0], "Mail.Read");
        assert_eq!(start.refresh_margin, DEFAULT_REFRESH_MARGIN);
        assert!(!read.iter().any(|v| v == TOKEN_REFRESH_MARGIN_SECONDS), "{read:?}");
        for role in [Role::ConnectionApi, Role::Refresher, Role::Operator] {
            let (config, read) = asked(role);
            assert!(!read.iter().any(|v| v == MICROSOFT_SCOPES), "{role:?} {read:?}");
            assert!(!read.iter().any(|v| v == AUTOKITTEH_UI_URL), "{role:?}");
            assert_eq!(config.refresh_margin, Duration::from_secs(60));
            assert_eq!(config.dashboard_url, None);
            assert!(read.iter().any(|v| v == MICROSOFT_GRAPH_URL), "{role:?}");
        }
        let (redirect, _) = asked(Role::Redirect);
        assert!(redirect.dashboard_url.is_some());
        assert_eq!(redirect.autokitteh.unwrap().ui_url.as_str(), "https://app.autokitteh.example/");
    }

    #[test]
    fn errors_name_the_variable() {
        let err = Config::from_lookup(&lookup(&[])).unwrap_err();
        assert_eq!(err.var, WEBHOOK_ADDRESS);
        let mut vars = base();
        vars.push((MICROSOFT_GRAPH_URL, "http://graph.example.com"));
        let err = Config::from_lookup(&lookup(&vars)).unwrap_err();
        assert_eq!(err.var, MICROSOFT_GRAPH_URL);
        assert!(err.to_string().starts_with("MICROSOFT_GRAPH_URL "));
        let mut vars = base();
        vars.push((MICROSOFT_TENANT_ID, "common/../x"));
        assert_eq!(Config::from_lookup(&lookup(&vars)).unwrap_err().var, MICROSOFT_TENANT_ID);
    }

    #[test]
    fn the_refresh_margin_is_seconds_up_to_fifty_minutes() {
        let base = vec![
            (WEBHOOK_ADDRESS, "api.example.com"),
            (MICROSOFT_CLIENT_ID, "11111111-2222-3333-4444-555555555555"),
            (OAUTH_TABLE_NAME, "t"),
        ];
        let with = |margin: &'static str| {
            let mut vars = base.clone();
            vars.push((TOKEN_REFRESH_MARGIN_SECONDS, margin));
            Config::from_lookup(&lookup(&vars))
        };
        assert_eq!(
            Config::from_lookup(&lookup(&base)).unwrap().refresh_margin,
            DEFAULT_REFRESH_MARGIN
        );
        assert_eq!(with("0").unwrap().refresh_margin, Duration::ZERO);
        assert_eq!(with("3000").unwrap().refresh_margin, Duration::from_secs(3000));
        for bad in ["3001", "-1", "5m", "1.5"] {
            assert_eq!(with(bad).unwrap_err().var, TOKEN_REFRESH_MARGIN_SECONDS, "{bad}");
        }
    }

    #[test]
    fn plain_http_to_a_private_address_only_under_sam_local() {
        let base = [
            (WEBHOOK_ADDRESS, "http://localhost:9000"),
            (MICROSOFT_CLIENT_ID, "11111111-2222-3333-4444-555555555555"),
            (OAUTH_TABLE_NAME, "t"),
            (MICROSOFT_AUTHORITY_HOST, "http://172.17.0.1:9100"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let vars: Vec<(&str, &str)> = base.iter().chain(extra).copied().collect();
            Config::from_lookup(&|k| {
                vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
            })
        };
        let refused = with(&[]).unwrap_err();
        assert_eq!(refused.var, MICROSOFT_AUTHORITY_HOST);
        assert!(with(&[(AWS_SAM_LOCAL, "true")]).is_ok());
        assert!(with(&[(AWS_SAM_LOCAL, "false")]).is_err());
        // A public address stays https-only even there.
        let public = [(AWS_SAM_LOCAL, "true"), (MICROSOFT_GRAPH_URL, "http://203.0.113.9")];
        assert_eq!(with(&public).unwrap_err().var, MICROSOFT_GRAPH_URL);
    }

    #[test]
    fn autokitteh_mode_needs_https_except_on_loopback() {
        let config = Config::from_lookup(&lookup(&base())).unwrap();
        assert_eq!(config.autokitteh, None);
        let mut vars = base();
        vars.push((AUTOKITTEH_API_URL, "https://api.autokitteh.cloud/"));
        let ak = Config::from_lookup(&lookup(&vars)).unwrap().autokitteh.unwrap();
        assert_eq!(ak.api_url.as_str(), "https://api.autokitteh.cloud/");
        assert_eq!(ak.ui_url, ak.api_url);
        vars.push((AUTOKITTEH_UI_URL, "https://app.autokitteh.cloud"));
        let ak = Config::from_lookup(&lookup(&vars)).unwrap().autokitteh.unwrap();
        assert_eq!(ak.ui_url.as_str(), "https://app.autokitteh.cloud/");
        for bad in ["http://api.autokitteh.cloud", "api.autokitteh.cloud", "https://x/?q=1"] {
            let mut vars = base();
            vars.push((AUTOKITTEH_API_URL, bad));
            assert_eq!(
                Config::from_lookup(&lookup(&vars)).unwrap_err().var,
                AUTOKITTEH_API_URL,
                "{bad}"
            );
        }
        let mut vars = base();
        vars.push((AUTOKITTEH_API_URL, "http://127.0.0.1:9980"));
        assert!(Config::from_lookup(&lookup(&vars)).unwrap().autokitteh.is_some());
    }

    #[test]
    fn secrets_come_from_exactly_one_place() {
        let both =
            lookup(&[(START_LINK_KEY, "k"), (START_LINK_KEY_ARN, "arn:aws:secretsmanager:x")]);
        assert!(secret_source(&both, START_LINK_KEY, START_LINK_KEY_ARN).is_err());
        let arn = lookup(&[(START_LINK_KEY_ARN, "arn:aws:secretsmanager:us-east-1:1:secret:k")]);
        assert!(matches!(
            secret_source(&arn, START_LINK_KEY, START_LINK_KEY_ARN),
            Ok(SecretSource::SecretsManager { .. })
        ));
        let name = lookup(&[(START_LINK_KEY_ARN, "autokitteh-oauth-local/start-link-key")]);
        assert!(matches!(
            secret_source(&name, START_LINK_KEY, START_LINK_KEY_ARN),
            Ok(SecretSource::SecretsManager { .. })
        ));
        let none = lookup(&[]);
        assert_eq!(
            secret_source(&none, START_LINK_KEY, START_LINK_KEY_ARN).unwrap_err().var,
            START_LINK_KEY
        );
    }
}
