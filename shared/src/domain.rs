//! Validated values that cross the public boundary: connection ids, origins, tenants.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Tenant id Microsoft gives every personal (consumer) account.
pub const PERSONAL_ACCOUNT_TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

/// Why a user-supplied value was rejected. The messages are safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("the connection id is missing")]
    MissingConnectionId,
    #[error("the connection id is not a valid AutoKitteh connection id")]
    BadConnectionId,
    #[error("the origin is missing")]
    MissingOrigin,
    #[error("the origin must be one of web, cli, vscode or dash")]
    BadOrigin,
}

/// An AutoKitteh connection id: `con_` followed by 26 characters of `[0-9a-z]`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionId(String);

impl ConnectionId {
    const PREFIX: &'static str = "con_";
    const BODY_LEN: usize = 26;

    /// The id as it appears in AutoKitteh.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ConnectionId {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(InvalidInput::MissingConnectionId);
        }
        let body = s.strip_prefix(Self::PREFIX).ok_or(InvalidInput::BadConnectionId)?;
        let valid = body.len() == Self::BODY_LEN
            && body.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
        if valid { Ok(Self(s.to_owned())) } else { Err(InvalidInput::BadConnectionId) }
    }
}

impl TryFrom<String> for ConnectionId {
    type Error = InvalidInput;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<ConnectionId> for String {
    fn from(value: ConnectionId) -> Self {
        value.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({})", self.0)
    }
}

/// Where the user started the flow, which decides how the browser is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Web,
    Cli,
    Vscode,
    Dash,
}

impl Origin {
    /// Every origin, in the order the docs list them.
    pub const ALL: [Origin; 4] = [Origin::Web, Origin::Cli, Origin::Vscode, Origin::Dash];

    /// The wire name used in query strings.
    /// Where the user started, in words for a page.
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Web => "the AutoKitteh web app",
            Origin::Cli => "the AutoKitteh CLI",
            Origin::Vscode => "the AutoKitteh VS Code extension",
            Origin::Dash => "the AutoKitteh dashboard",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Web => "web",
            Origin::Cli => "cli",
            Origin::Vscode => "vscode",
            Origin::Dash => "dash",
        }
    }
}

impl FromStr for Origin {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err(InvalidInput::MissingOrigin),
            "web" => Ok(Origin::Web),
            "cli" => Ok(Origin::Cli),
            "vscode" => Ok(Origin::Vscode),
            "dash" => Ok(Origin::Dash),
            _ => Err(InvalidInput::BadOrigin),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tenant segment of the Microsoft endpoints: `common`, `organizations`, `consumers`,
/// a tenant GUID, or a verified domain name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tenant(String);

impl Tenant {
    /// The segment as it appears in the endpoint path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Tenant {
    fn default() -> Self {
        Self("common".to_owned())
    }
}

impl FromStr for Tenant {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("must not be empty");
        }
        if s.len() > 253 {
            return Err("is longer than a domain name can be");
        }
        // GUIDs, the three aliases and DNS names all fit this alphabet; anything else would
        // change the endpoint path.
        let allowed = s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !allowed || s.starts_with(['.', '-']) || s.ends_with(['.', '-']) {
            return Err("must be common, organizations, consumers, a tenant GUID or a domain");
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

impl TryFrom<String> for Tenant {
    type Error = &'static str;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Tenant> for String {
    fn from(value: Tenant) -> Self {
        value.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_follow_autokitteh_format() {
        assert!("con_01h9x3k6rtv2d9yb3pfcw6qz7m".parse::<ConnectionId>().is_ok());
        for bad in [
            "con_01H9X3K6RTV2D9YB3PFCW6QZ7M",
            "con_01h9x3k6rtv2d9yb3pfcw6qz7",
            "con_01h9x3k6rtv2d9yb3pfcw6qz7mm",
            "prj_01h9x3k6rtv2d9yb3pfcw6qz7m",
            "con_01h9x3k6rtv2d9yb3pfcw6q-7m",
            "con_01h9x3k6rtv2d9yb3pfcw6qzé",
        ] {
            assert_eq!(bad.parse::<ConnectionId>(), Err(InvalidInput::BadConnectionId), "{bad}");
        }
        assert_eq!("".parse::<ConnectionId>(), Err(InvalidInput::MissingConnectionId));
    }

    #[test]
    fn origins_are_a_closed_set() {
        for origin in Origin::ALL {
            assert_eq!(origin.as_str().parse::<Origin>(), Ok(origin));
        }
        assert_eq!("Web".parse::<Origin>(), Err(InvalidInput::BadOrigin));
        assert_eq!("https://evil.example".parse::<Origin>(), Err(InvalidInput::BadOrigin));
        assert_eq!("".parse::<Origin>(), Err(InvalidInput::MissingOrigin));
    }

    #[test]
    fn tenants_accept_aliases_guids_and_domains_only() {
        for ok in ["common", "organizations", "consumers", PERSONAL_ACCOUNT_TENANT, "contoso.com"] {
            assert_eq!(ok.parse::<Tenant>().map(|t| t.0), Ok(ok.to_owned()));
        }
        for bad in ["", "a/b", "common?x=1", "../common", "-x", "x."] {
            assert!(bad.parse::<Tenant>().is_err(), "{bad}");
        }
    }
}
