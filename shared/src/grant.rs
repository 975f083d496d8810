//! Start grants: short-lived HS256 JWTs with which the platform authorises one start link.
//!
//! Only the AutoKitteh platform holds `START_LINK_KEY`, so only it can send a browser into the
//! flow for a given connection. Without this, anyone could attach their own Microsoft account
//! to someone else's connection.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::domain::{ConnectionId, Origin};

/// The `aud` claim of every start grant.
pub const GRANT_AUDIENCE: &str = "autokitteh-oauth-start:microsoft";
/// The longest lifetime a grant may claim, in seconds.
pub const MAX_GRANT_LIFETIME_SECS: i64 = 600;
/// Tolerated clock difference between the platform and the functions, in seconds.
pub const CLOCK_SKEW_SECS: i64 = 30;
/// Shortest accepted signing key, in bytes (HS256 wants at least its output size).
pub const MIN_KEY_LEN: usize = 32;
/// Longest grant we read; ours are about 250 characters.
pub const MAX_GRANT_LEN: usize = 1024;

/// The claims of a start grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    pub aud: String,
    pub cid: String,
    pub origin: String,
    /// Issued at, epoch seconds.
    pub iat: i64,
    /// Expires at, epoch seconds.
    pub exp: i64,
}

/// Why a grant was refused. Shown to the user in general terms only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the start link has no grant")]
    Missing,
    #[error("the start grant is malformed or its signature is wrong")]
    Invalid,
    #[error("the start grant expired")]
    Expired,
    #[error("the start grant claims a lifetime longer than allowed")]
    TooLong,
    #[error("the start grant was issued for another connection or origin")]
    Mismatch,
}

/// The key start grants are signed with.
#[derive(Clone)]
pub struct GrantKey(SecretString);

impl std::fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantKey([redacted])")
    }
}

/// A start-link key shorter than [`MIN_KEY_LEN`].
#[derive(Debug, thiserror::Error)]
#[error("the start-link key must be at least {MIN_KEY_LEN} bytes long")]
pub struct WeakKey;

impl GrantKey {
    pub fn new(secret: SecretString) -> Result<Self, WeakKey> {
        if secret.expose_secret().len() < MIN_KEY_LEN {
            return Err(WeakKey);
        }
        Ok(Self(secret))
    }

    /// Signs a grant for `cid` and `origin`, valid from `now` for `lifetime_secs`.
    pub fn sign(
        &self,
        cid: &ConnectionId,
        origin: Origin,
        now: i64,
        lifetime_secs: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = GrantClaims {
            aud: GRANT_AUDIENCE.to_owned(),
            cid: cid.to_string(),
            origin: origin.to_string(),
            iat: now,
            exp: now + lifetime_secs.min(MAX_GRANT_LIFETIME_SECS),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(self.0.expose_secret().as_bytes()),
        )
    }

    /// Checks that `grant` was signed with this key for exactly `cid` and `origin` and is
    /// valid at `now`.
    pub fn verify(
        &self,
        grant: &str,
        cid: &ConnectionId,
        origin: Origin,
        now: i64,
    ) -> Result<GrantClaims, GrantError> {
        if grant.is_empty() {
            return Err(GrantError::Missing);
        }
        if grant.len() > MAX_GRANT_LEN {
            return Err(GrantError::Invalid);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[GRANT_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        // Time is checked below against our own clock.
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<GrantClaims>(
            grant,
            &DecodingKey::from_secret(self.0.expose_secret().as_bytes()),
            &validation,
        )
        .map_err(|_| GrantError::Invalid)?
        .claims;
        if claims.exp + CLOCK_SKEW_SECS <= now {
            return Err(GrantError::Expired);
        }
        if claims.exp - claims.iat > MAX_GRANT_LIFETIME_SECS
            || claims.exp > now + MAX_GRANT_LIFETIME_SECS + CLOCK_SKEW_SECS
        {
            return Err(GrantError::TooLong);
        }
        if claims.cid != cid.as_str() || claims.origin != origin.as_str() {
            return Err(GrantError::Mismatch);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn key() -> GrantKey {
        GrantKey::new(SecretString::from("k".repeat(32))).unwrap()
    }

    fn cid() -> ConnectionId {
        "con_01h9x3k6rtv2d9yb3pfcw6qz7m".parse().unwrap()
    }

    #[test]
    fn a_signed_grant_verifies_for_its_connection_and_origin() {
        let grant = key().sign(&cid(), Origin::Web, NOW, 300).unwrap();
        let claims = key().verify(&grant, &cid(), Origin::Web, NOW + 299).unwrap();
        assert_eq!(claims.aud, GRANT_AUDIENCE);
        assert_eq!(claims.exp, NOW + 300);
    }

    #[test]
    fn grants_bind_connection_and_origin() {
        let grant = key().sign(&cid(), Origin::Web, NOW, 300).unwrap();
        let other: ConnectionId = "con_01h9x3k6rtv2d9yb3pfcw6qz7n".parse().unwrap();
        assert_eq!(key().verify(&grant, &other, Origin::Web, NOW), Err(GrantError::Mismatch));
        assert_eq!(key().verify(&grant, &cid(), Origin::Cli, NOW), Err(GrantError::Mismatch));
    }

    #[test]
    fn expired_forged_and_overlong_grants_are_refused() {
        let grant = key().sign(&cid(), Origin::Web, NOW, 300).unwrap();
        assert_eq!(
            key().verify(&grant, &cid(), Origin::Web, NOW + 300 + CLOCK_SKEW_SECS),
            Err(GrantError::Expired)
        );
        let other_key = GrantKey::new(SecretString::from("x".repeat(32))).unwrap();
        assert_eq!(other_key.verify(&grant, &cid(), Origin::Web, NOW), Err(GrantError::Invalid));
        let mut tampered = grant.clone();
        tampered.insert(tampered.len() / 2, 'A');
        assert_eq!(key().verify(&tampered, &cid(), Origin::Web, NOW), Err(GrantError::Invalid));
        assert_eq!(key().verify("", &cid(), Origin::Web, NOW), Err(GrantError::Missing));
        assert_eq!(
            key().verify(&"a".repeat(5000), &cid(), Origin::Web, NOW),
            Err(GrantError::Invalid)
        );

        // A grant minted with a lifetime beyond the limit (by a misconfigured platform).
        let long = GrantClaims {
            aud: GRANT_AUDIENCE.into(),
            cid: cid().to_string(),
            origin: "web".into(),
            iat: NOW,
            exp: NOW + 3600,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &long,
            &EncodingKey::from_secret("k".repeat(32).as_bytes()),
        )
        .unwrap();
        assert_eq!(key().verify(&token, &cid(), Origin::Web, NOW), Err(GrantError::TooLong));
    }

    #[test]
    fn algorithm_none_and_other_audiences_are_refused() {
        // alg=none with the same claims.
        let header = URL_SAFE.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE.encode(
            format!(
                r#"{{"aud":"{GRANT_AUDIENCE}","cid":"{}","origin":"web","iat":{NOW},"exp":{}}}"#,
                cid(),
                NOW + 60
            )
            .as_bytes(),
        );
        let none = format!("{header}.{body}.");
        assert_eq!(key().verify(&none, &cid(), Origin::Web, NOW), Err(GrantError::Invalid));

        let wrong_aud = GrantClaims {
            aud: "something-else".into(),
            cid: cid().to_string(),
            origin: "web".into(),
            iat: NOW,
            exp: NOW + 60,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &wrong_aud,
            &EncodingKey::from_secret("k".repeat(32).as_bytes()),
        )
        .unwrap();
        assert_eq!(key().verify(&token, &cid(), Origin::Web, NOW), Err(GrantError::Invalid));
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(GrantKey::new(SecretString::from("short")).is_err());
    }

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as URL_SAFE;
}
